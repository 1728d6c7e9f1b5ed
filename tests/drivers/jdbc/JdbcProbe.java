// pgjdbc probe for tests/integration/test_jdbc.py: runs one scenario against one JDBC URL and prints what it
// saw as deterministic text, one line per row or value, so that the output of a run straight against
// PostgreSQL and of a run through pgproxy can be compared byte for byte.
//
// Usage: java -cp .:postgresql.jar JdbcProbe URL USER PASSWORD SCENARIO TAG
// TAG makes object names unique (two runs must not collide); it is printed as "<tag>". Errors a scenario
// provokes on purpose are printed as "error|SQLSTATE|message"; any other exception exits non-zero.
// With PROBE_HOLD set in the environment, the probe says "holding" on stderr once the scenario is done and
// waits for a line on stdin before it closes its connection.

import java.io.StringReader;
import java.io.StringWriter;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.sql.Array;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.Date;
import java.sql.DriverManager;
import java.sql.ParameterMetaData;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.SQLWarning;
import java.sql.Savepoint;
import java.sql.Statement;
import java.sql.Timestamp;
import java.sql.Types;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicReference;

import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyIn;
import org.postgresql.copy.CopyManager;
import org.postgresql.jdbc.PreferQueryMode;
import org.postgresql.largeobject.LargeObject;
import org.postgresql.largeobject.LargeObjectManager;

public final class JdbcProbe {
    private final Connection conn;
    private final String url;  // to open more connections like the first one
    private final Properties props;
    private final String tag;
    private final StringBuilder out = new StringBuilder();

    private JdbcProbe(Connection conn, String url, Properties props, String tag) {
        this.conn = conn;
        this.url = url;
        this.props = props;
        this.tag = tag;
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 5) {
            System.err.println("usage: JdbcProbe URL USER PASSWORD SCENARIO TAG");
            System.exit(2);
        }
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", args[2]);
        props.setProperty("connectTimeout", "20");
        props.setProperty("socketTimeout", "60");
        JdbcProbe probe = null;
        int status = 0;
        try (Connection conn = DriverManager.getConnection(args[0], props)) {
            probe = new JdbcProbe(conn, args[0], props, args[4]);
            probe.run(args[3]);
            if (System.getenv("PROBE_HOLD") != null) {
                // The caller inspects pgproxy's view of this still-open session, then sends a line to go on.
                System.err.println("holding");
                System.err.flush();
                System.in.read();
            }
        } catch (Exception e) {
            e.printStackTrace();  // what was printed so far still goes to stdout, for the diagnosis
            status = 1;
        }
        if (probe != null) {
            System.out.write(probe.out.toString().getBytes(StandardCharsets.UTF_8));
            System.out.flush();
        }
        System.exit(status);
    }

    private void run(String scenario) throws Exception {
        switch (scenario) {
            case "statements" -> statements();
            case "types" -> types();
            case "prepared" -> prepared();
            case "batch" -> batch();
            case "savepoint" -> savepoint();
            case "error_recovery" -> errorRecovery();
            case "fetch_size" -> fetchSize();
            case "copy" -> copy();
            case "cancel" -> cancel();
            case "metadata" -> metadata();
            case "notify" -> notifyScenario();
            case "startup_options" -> startupOptions();
            case "large_object" -> largeObject();
            case "parallel" -> parallel();
            default -> throw new IllegalArgumentException("unknown scenario " + scenario);
        }
        line("done", "autocommit=" + conn.getAutoCommit(), "closed=" + conn.isClosed());
    }

    // -- output -----------------------------------------------------------------------------------------

    private void line(Object... parts) {
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < parts.length; i++) {
            if (i > 0) {
                sb.append('|');
            }
            sb.append(parts[i] instanceof String s ? s : render(parts[i]));
        }
        out.append(sb.toString().replace(tag, "<tag>")).append('\n');
    }

    private static String render(Object value) {
        if (value == null) {
            return "NULL";
        }
        if (value instanceof byte[] bytes) {
            StringBuilder sb = new StringBuilder("bytes:");
            for (byte b : bytes) {
                sb.append(String.format("%02x", b));
            }
            return sb.toString();
        }
        if (value instanceof Array array) {
            try {
                return "Array<" + array.getBaseTypeName() + ">:" + render(array.getArray());
            } catch (SQLException e) {
                throw new IllegalStateException(e);
            }
        }
        if (value instanceof Object[] items) {
            List<String> parts = new ArrayList<>();
            for (Object item : items) {
                parts.add(render(item));
            }
            return "[" + String.join(", ", parts) + "]";
        }
        if (value instanceof int[] || value instanceof long[] || value instanceof double[]) {
            return value.getClass().getSimpleName() + ":" + java.util.Arrays.toString(boxed(value));
        }
        return value.getClass().getSimpleName() + ":" + value;
    }

    private static Object[] boxed(Object primitiveArray) {
        int n = java.lang.reflect.Array.getLength(primitiveArray);
        Object[] items = new Object[n];
        for (int i = 0; i < n; i++) {
            items[i] = java.lang.reflect.Array.get(primitiveArray, i);
        }
        return items;
    }

    private void error(SQLException e) {
        line("error", String.valueOf(e.getSQLState()), e.getMessage().replace("\n  ", "; "));
    }

    private void warnings(SQLWarning warning) {
        for (SQLWarning w = warning; w != null; w = w.getNextWarning()) {
            line("warning", String.valueOf(w.getSQLState()), w.getMessage());
        }
    }

    /** Every row of a result set: column values as getObject and as getString. */
    private int rows(String label, ResultSet rs) throws SQLException {
        ResultSetMetaData md = rs.getMetaData();
        int count = 0;
        while (rs.next()) {
            count++;
            StringBuilder sb = new StringBuilder(label).append("|row");
            for (int c = 1; c <= md.getColumnCount(); c++) {
                sb.append('|').append(render(rs.getObject(c))).append(" ~ ").append(text(rs.getString(c)));
            }
            line(sb.toString());
        }
        line(label, "rows=" + count);
        return count;
    }

    /** getString, except that pgjdbc answers it for a bytea received in binary with byte[].toString(). */
    private static String text(String value) {
        return value != null && value.startsWith("[B@") ? "[B@(binary bytea)" : value;
    }

    private void columns(String label, ResultSetMetaData md) throws SQLException {
        for (int c = 1; c <= md.getColumnCount(); c++) {
            line(label, "column", md.getColumnLabel(c), md.getColumnTypeName(c), "type=" + md.getColumnType(c),
                    "class=" + md.getColumnClassName(c), "precision=" + md.getPrecision(c), "scale=" + md.getScale(c));
        }
    }

    private void query(String label, String sql) throws SQLException {
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            rows(label, rs);
        }
    }

    private void update(String sql) throws SQLException {
        try (Statement st = conn.createStatement()) {
            line("update", st.executeUpdate(sql));
            warnings(st.getWarnings());
        }
    }

    // -- scenarios --------------------------------------------------------------------------------------

    static final String TYPES_QUERY = """
            SELECT 1::int2 AS i2, (-2147483648)::int4 AS i4, 9223372036854775807::int8 AS i8,
                   12345678901234567890.123456789::numeric AS num, 'NaN'::numeric AS num_nan, (-0.5)::numeric(5, 2) AS num_neg,
                   1.5::float4 AS f4, pi()::float8 AS f8, '-Infinity'::float8 AS f8_inf, 'NaN'::float4 AS f4_nan,
                   'ü∑🙂 text'::text AS t, 'abc'::varchar(5) AS vc, 'x'::char(3) AS ch, ''::text AS empty,
                   '\\x00ff10'::bytea AS b, ''::bytea AS b_empty, true AS bool_t, false AS bool_f,
                   '2024-02-29'::date AS d, '0001-01-01'::date AS d_min, '13:14:15.5'::time AS tm,
                   '13:14:15+02'::timetz AS tmtz, '2024-02-29 13:14:15.123456'::timestamp AS ts,
                   '2024-02-29 13:14:15.123456+05:30'::timestamptz AS tstz, 'infinity'::timestamp AS ts_inf,
                   '1 year 2 mons 3 days 04:05:06.789'::interval AS iv,
                   'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u,
                   '{"a": [1, 2, {"b": null}], "s": "ü"}'::json AS j, '{"z": 1, "a": "x"}'::jsonb AS jb,
                   ARRAY[1, NULL, 3]::int[] AS a_int, ARRAY[['a', 'b'], ['c', NULL]] AS a_text2d, ARRAY[]::text[] AS a_empty,
                   ARRAY[1.5, -2]::float8[] AS a_f8, ARRAY['2024-01-01'::date] AS a_date, ARRAY['{"k": 1}'::jsonb] AS a_jsonb,
                   NULL::int AS n_int, NULL::text AS n_text, NULL::bytea AS n_bytea, NULL::int[] AS n_array,
                   ROW(1, 'two', NULL::date, 1.5::numeric) AS rec,
                   '192.168.0.0/24'::cidr AS net, '10.1.2.3'::inet AS host, '08:00:2b:01:02:03'::macaddr AS mac,
                   int4range(1, 10) AS rng, '(1.5,2)'::point AS pt, '((0,0),(1,1))'::box AS bx, 'a b'::tsvector AS tsv,
                   42::oid AS an_oid, '12.34'::money AS cash, B'1011'::bit(4) AS bits, 'nm'::name AS nm
            """;

    /** Plain java.sql.Statement: DDL, DML update counts, multi-statement strings, notices, many types. */
    private void statements() throws Exception {
        update("CREATE TEMP TABLE st(id int PRIMARY KEY, name text, amount numeric(10, 2), seen timestamptz)");
        update("INSERT INTO st SELECT g, 'name ' || g, g * 1.25, '2024-01-01'::timestamptz + g * interval '1 hour' "
                + "FROM generate_series(1, 25) g");
        update("UPDATE st SET name = upper(name) WHERE id % 5 = 0");
        update("DELETE FROM st WHERE id > 20");
        query("select", "SELECT * FROM st ORDER BY id");
        try (Statement st = conn.createStatement()) {
            boolean isResult = st.execute("INSERT INTO st VALUES (100, 'multi'); SELECT id, name FROM st WHERE id >= 20 "
                    + "ORDER BY id; UPDATE st SET name = 'x' WHERE id = 100; SELECT 1 WHERE false");
            int index = 0;
            while (true) {
                if (isResult) {
                    try (ResultSet rs = st.getResultSet()) {
                        rows("multi" + index, rs);
                    }
                } else {
                    int count = st.getUpdateCount();
                    if (count == -1) {
                        break;
                    }
                    line("multi" + index, "count=" + count);
                }
                index++;
                isResult = st.getMoreResults();
            }
            st.execute("DO $$ BEGIN RAISE NOTICE 'hello from %', 'plpgsql'; RAISE WARNING 'careful'; END $$");
            warnings(st.getWarnings());
            line("empty query", st.execute(";"), st.getUpdateCount());
        }
        try (Statement st = conn.createStatement()) {
            st.setMaxRows(7);
            try (ResultSet rs = st.executeQuery("SELECT g FROM generate_series(1, 1000) g")) {
                rows("maxrows", rs);
            }
        }
        try (Statement st = conn.createStatement();
             ResultSet rs = st.executeQuery("SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 100000) g")) {
            StringBuilder all = new StringBuilder();
            int count = 0;
            while (rs.next()) {
                all.append(rs.getInt(1)).append('|').append(rs.getString(2)).append('\n');
                count++;
            }
            line("large", "rows=" + count, "sha256=" + sha256(all.toString()));
        }
        if (conn.unwrap(PGConnection.class).getPreferQueryMode() != PreferQueryMode.SIMPLE) {  // no OUT there
            try (java.sql.CallableStatement call = conn.prepareCall("{? = call upper(?)}")) {
                call.registerOutParameter(1, Types.VARCHAR);
                call.setString(2, "called ü");
                call.execute();
                line("callable", call.getString(1));
            }
        }
        line("valid", conn.isValid(5));
        query("identity", "SELECT current_user, current_database(), current_setting('TimeZone'), "
                + "current_setting('DateStyle'), current_setting('extra_float_digits'), current_setting('client_encoding'), "
                + "pg_backend_pid() = " + conn.unwrap(PGConnection.class).getBackendPID() + " AS pid_matches");
        types();
    }

    /** One row of (nearly) every common type: column metadata, getObject and getString. */
    private void types() throws SQLException {
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(TYPES_QUERY)) {
            columns("types", rs.getMetaData());
            ResultSetMetaData md = rs.getMetaData();
            while (rs.next()) {
                for (int c = 1; c <= md.getColumnCount(); c++) {
                    Object object = rs.getObject(c);
                    line("value", md.getColumnLabel(c), render(object), String.valueOf(rs.getString(c)),
                            "wasNull=" + rs.wasNull());
                }
                line("typed", rs.getInt("i4"), rs.getLong("i8"), rs.getBigDecimal("num"), rs.getDouble("f8"),
                        rs.getFloat("f4"), rs.getBytes("b"), rs.getBoolean("bool_t"), rs.getDate("d"),
                        rs.getTime("tm"), rs.getTimestamp("ts"), rs.getTimestamp("tstz"),
                        rs.getObject("tstz", java.time.OffsetDateTime.class),
                        rs.getObject("d", java.time.LocalDate.class), rs.getObject("u", UUID.class));
            }
        }
    }

    /** A PreparedStatement run 10 times: past prepareThreshold (5) pgjdbc switches to a named server statement. */
    private void prepared() throws SQLException {
        String sql = "SELECT ?::int4 AS i, ?::int8 AS l, ?::numeric AS n, ?::float8 AS f, ?::text AS t, ?::bytea AS b, "
                + "?::bool AS o, ?::date AS d, ?::timestamp AS ts, ?::uuid AS u, ?::int4[] AS a, ?::text AS nothing, "
                + "g, g * 0.5 AS half FROM generate_series(1, ?) g";
        try (PreparedStatement ps = conn.prepareStatement(sql)) {
            ParameterMetaData pmd = ps.getParameterMetaData();
            for (int p = 1; p <= pmd.getParameterCount(); p++) {
                line("param", p, pmd.getParameterTypeName(p), "type=" + pmd.getParameterType(p));
            }
            columns("prepared", ps.getMetaData());
            for (int run = 0; run < 10; run++) {
                ps.setInt(1, run * 1000 - 1);
                ps.setLong(2, Long.MAX_VALUE - run);
                ps.setBigDecimal(3, new BigDecimal("-1234.5678").add(BigDecimal.valueOf(run)));
                ps.setDouble(4, run / 3.0);
                ps.setString(5, "run " + run + " ü∑🙂 'quoted'");
                ps.setBytes(6, new byte[] {0, (byte) run, (byte) 0xff});
                ps.setBoolean(7, run % 2 == 0);
                ps.setDate(8, Date.valueOf("2024-02-" + (10 + run)));
                ps.setTimestamp(9, Timestamp.valueOf("2000-01-02 03:04:05." + (123456 + run)));
                ps.setObject(10, new UUID(run, 7));
                ps.setArray(11, conn.createArrayOf("int4", new Integer[] {run, null, -run}));
                ps.setNull(12, Types.VARCHAR);
                ps.setInt(13, run % 4);
                try (ResultSet rs = ps.executeQuery()) {
                    rows("run" + run, rs);
                }
                line("run" + run, "server_prepare=" + ps.unwrap(PGStatement.class).isUseServerPrepare());
            }
        }
        try (PreparedStatement ps = conn.prepareStatement("SELECT ? || ':' || g FROM generate_series(1, ?) g")) {
            for (int run = 0; run < 8; run++) {
                ps.setString(1, "p" + run);
                ps.setInt(2, run);
                try (ResultSet rs = ps.executeQuery()) {
                    rows("second" + run, rs);
                }
            }
        }
        query("server statements", "SELECT name, statement, parameter_types::text, from_sql FROM pg_prepared_statements "
                + "ORDER BY name");
    }

    /** addBatch/executeBatch on a PreparedStatement and on a Statement (reWriteBatchedInserts comes in the URL). */
    private void batch() throws SQLException {
        update("CREATE TEMP TABLE bt(id int PRIMARY KEY, name text, amount numeric, flag bool)");
        try (PreparedStatement ps = conn.prepareStatement("INSERT INTO bt VALUES (?, ?, ?, ?)")) {
            for (int round = 0; round < 3; round++) {
                for (int i = 0; i < 250; i++) {
                    int id = round * 250 + i;
                    ps.setInt(1, id);
                    ps.setString(2, "name " + id);
                    if (id % 7 == 0) {
                        ps.setNull(3, Types.NUMERIC);
                    } else {
                        ps.setBigDecimal(3, BigDecimal.valueOf(id, 2));
                    }
                    ps.setBoolean(4, id % 2 == 0);
                    ps.addBatch();
                }
                int[] counts = ps.executeBatch();
                line("batch" + round, "statements=" + counts.length, "sum=" + java.util.Arrays.stream(counts).sum());
            }
        }
        try (PreparedStatement ps = conn.prepareStatement("UPDATE bt SET name = upper(name) WHERE id % ? = 0")) {
            for (int m : new int[] {50, 100, 999}) {
                ps.setInt(1, m);
                ps.addBatch();
            }
            line("update batch", ps.executeBatch());
        }
        try (Statement st = conn.createStatement()) {
            st.addBatch("INSERT INTO bt VALUES (10000, 'stmt', 1, true)");
            st.addBatch("UPDATE bt SET flag = NOT flag WHERE id < 10");
            st.addBatch("DELETE FROM bt WHERE id BETWEEN 700 AND 749");
            line("statement batch", st.executeBatch());
        }
        try (PreparedStatement ps = conn.prepareStatement("INSERT INTO bt VALUES (?, 'dup', 0, false)")) {
            ps.setInt(1, 20000);
            ps.addBatch();
            ps.setInt(1, 1);  // duplicate key: the batch fails
            ps.addBatch();
            ps.executeBatch();
            line("duplicate batch", "no error");
        } catch (java.sql.BatchUpdateException e) {
            line("error", e.getSQLState(), "batch failed", e.getNextException() == null ? "NULL"
                    : e.getNextException().getSQLState() + " " + e.getNextException().getMessage().lines().findFirst()
                    .orElse(""));
        }
        query("summary", "SELECT count(*), sum(id), count(amount), sum(amount), count(*) FILTER (WHERE flag), "
                + "count(*) FILTER (WHERE name = upper(name)) FROM bt");
        query("sample", "SELECT * FROM bt WHERE id IN (0, 1, 7, 50, 100, 749, 10000, 20000) ORDER BY id");
    }

    /** A transaction with savepoints: rollback to one, release another, commit. */
    private void savepoint() throws SQLException {
        update("CREATE TEMP TABLE sp(id int, note text)");
        conn.setAutoCommit(false);
        update("INSERT INTO sp VALUES (1, 'before')");
        Savepoint first = conn.setSavepoint("first");
        line("savepoint", first.getSavepointName());
        update("INSERT INTO sp VALUES (2, 'rolled back')");
        Savepoint unnamed = conn.setSavepoint();
        line("savepoint id", unnamed.getSavepointId());
        update("INSERT INTO sp VALUES (3, 'also rolled back')");
        conn.rollback(first);
        update("INSERT INTO sp VALUES (4, 'after rollback')");
        Savepoint second = conn.setSavepoint("second");
        update("INSERT INTO sp VALUES (5, 'released')");
        conn.releaseSavepoint(second);
        query("in transaction", "SELECT * FROM sp ORDER BY id");
        conn.commit();
        update("INSERT INTO sp VALUES (6, 'rolled back whole')");
        conn.rollback();
        conn.setAutoCommit(true);
        query("committed", "SELECT * FROM sp ORDER BY id");
    }

    /** An error in the middle of a transaction, the aborted state, ROLLBACK and normal work again. */
    private void errorRecovery() throws SQLException {
        update("CREATE TEMP TABLE er(id int PRIMARY KEY)");
        conn.setAutoCommit(false);
        update("INSERT INTO er VALUES (1)");
        try (Statement st = conn.createStatement()) {
            st.executeQuery("SELECT 1 / (id - 1) FROM er");
        } catch (SQLException e) {
            error(e);
        }
        try (Statement st = conn.createStatement()) {
            st.executeQuery("SELECT 'ignored'");
        } catch (SQLException e) {
            error(e);
        }
        try (PreparedStatement ps = conn.prepareStatement("SELECT ?::int")) {
            ps.setInt(1, 1);
            ps.executeQuery();
        } catch (SQLException e) {
            error(e);
        }
        conn.rollback();
        query("after rollback", "SELECT count(*) FROM er");
        update("INSERT INTO er VALUES (2)");
        try (PreparedStatement ps = conn.prepareStatement("INSERT INTO er VALUES (?)")) {
            ps.setInt(1, 2);
            ps.executeUpdate();
        } catch (SQLException e) {
            error(e);
        }
        conn.rollback();
        conn.setAutoCommit(true);
        try (Statement st = conn.createStatement()) {
            st.executeQuery("SELECT * FROM no_such_table_<tag>".replace("<tag>", tag));
        } catch (SQLException e) {
            error(e);
        }
        try (Statement st = conn.createStatement()) {
            st.executeQuery("SELEC broken syntax");
        } catch (SQLException e) {
            error(e);
        }
        try (PreparedStatement ps = conn.prepareStatement("SELECT ?::int / ?::int")) {
            for (int d : new int[] {1, 0, 2, 0, 3, 4, 5, 0, 6, 7}) {  // failures while going past prepareThreshold
                ps.setInt(1, 42);
                ps.setInt(2, d);
                try (ResultSet rs = ps.executeQuery()) {
                    rows("divide by " + d, rs);
                } catch (SQLException e) {
                    error(e);
                }
            }
        }
        query("alive", "SELECT 'alive', count(*) FROM er");
    }

    /** setFetchSize inside a transaction: the portal is fetched in several Execute batches, two interleaved. */
    private void fetchSize() throws SQLException {
        conn.setAutoCommit(false);
        String sql = "SELECT g, md5(g::text) AS h, g * 1.5 AS x, g % 7 = 0 AS seventh FROM generate_series(1, ?) g";
        try (PreparedStatement ps = conn.prepareStatement(sql)) {
            ps.setFetchSize(1000);
            ps.setInt(1, 10000);
            try (ResultSet rs = ps.executeQuery()) {
                int count = 0;
                while (rs.next()) {
                    line("big", rs.getInt(1), rs.getString(2), rs.getBigDecimal(3), rs.getBoolean(4));
                    if (++count == 1500) {  // the portal is still open on the server, part-read
                        query("open portals", "SELECT name, statement, is_holdable, is_scrollable FROM pg_cursors "
                                + "WHERE name <> '' ORDER BY name");
                    }
                }
                line("big", "rows=" + count);
            }
        }
        try (Statement a = conn.createStatement(); Statement b = conn.createStatement()) {
            a.setFetchSize(37);
            b.setFetchSize(100);
            try (ResultSet ra = a.executeQuery("SELECT g FROM generate_series(1, 500) g");
                 ResultSet rb = b.executeQuery("SELECT -g FROM generate_series(1, 450) g")) {
                StringBuilder sb = new StringBuilder();
                int count = 0;
                boolean moreA = true;
                boolean moreB = true;
                while (moreA || moreB) {
                    moreA = moreA && ra.next();
                    if (moreA) {
                        sb.append(ra.getInt(1)).append(',');
                    }
                    moreB = moreB && rb.next();
                    if (moreB) {
                        sb.append(rb.getInt(1)).append(',');
                    }
                    if (++count % 50 == 0) {
                        line("interleaved", sb.toString());
                        sb.setLength(0);
                    }
                }
                line("interleaved", sb.toString());
            }
        }
        try (Statement st = conn.createStatement()) {
            st.setFetchSize(10);
            st.setMaxRows(25);
            try (ResultSet rs = st.executeQuery("SELECT g FROM generate_series(1, 100) g")) {
                rows("fetch+max", rs);
            }
        }
        conn.commit();
        conn.setAutoCommit(true);
        try (Statement st = conn.createStatement()) {
            st.setFetchSize(10);  // autocommit: pgjdbc ignores the fetch size and reads everything at once
            try (ResultSet rs = st.executeQuery("SELECT g FROM generate_series(1, 30) g")) {
                rows("autocommit", rs);
            }
        }
    }

    /** CopyManager: copyIn from a Reader (text and CSV), copyOut to a Writer, a CopyFail, a bad row. */
    private void copy() throws Exception {
        update("CREATE TEMP TABLE cp(id int, name text, note text, amount numeric)");
        CopyManager copy = conn.unwrap(PGConnection.class).getCopyAPI();
        StringBuilder csv = new StringBuilder();
        for (int i = 0; i < 3000; i++) {
            csv.append(i).append(",name ").append(i).append(",\"quoted, \"\"").append(i).append("\"\" ü\",")
                    .append(i % 5 == 0 ? "" : String.valueOf(i * 0.25)).append('\n');
        }
        line("copy in csv", copy.copyIn("COPY cp FROM STDIN WITH (FORMAT csv)", new StringReader(csv.toString())));
        line("copy in text", copy.copyIn("COPY cp FROM STDIN",
                new StringReader("5000\ttab\\there\t\\N\t1.5\n5001\tbackslash \\\\\tx\t\\N\n")));
        CopyIn in = copy.copyIn("COPY cp FROM STDIN");
        byte[] row = "6000\tcancelled\t\\N\t\\N\n".getBytes(StandardCharsets.UTF_8);
        in.writeToCopy(row, 0, row.length);
        try {
            in.cancelCopy();
            line("cancel copy", "done");
        } catch (SQLException e) {
            error(e);
        }
        try {
            copy.copyIn("COPY cp FROM STDIN WITH (FORMAT csv)", new StringReader("7000,ok,,1\nnot a number,x,,\n"));
        } catch (SQLException e) {
            error(e);
        }
        conn.setAutoCommit(false);  // COPY inside a transaction: one that fails, rolled back; one committed
        try {
            copy.copyIn("COPY cp FROM STDIN", new StringReader("8000\tin tx\t\\N\t\\N\nbad\n"));
        } catch (SQLException e) {
            error(e);
        }
        conn.rollback();
        line("copy in transaction", copy.copyIn("COPY cp FROM STDIN", new StringReader("8001\tin tx\t\\N\t2\n")));
        conn.commit();
        conn.setAutoCommit(true);
        query("after copy", "SELECT count(*), sum(id), count(amount), sum(amount) FROM cp");
        for (String sql : new String[] {
                "COPY (SELECT * FROM cp ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)",
                "COPY cp TO STDOUT",
                "COPY (SELECT id FROM cp WHERE false) TO STDOUT"}) {
            StringWriter writer = new StringWriter();
            long count = copy.copyOut(sql, writer);
            line("copy out", sql, count);
            for (String text : writer.toString().split("\n", -1)) {
                line("out", text);
            }
        }
        update("CREATE TEMP TABLE big(id int, payload text)");
        StringBuilder bigText = new StringBuilder();
        for (int i = 0; i < 100000; i++) {
            bigText.append(i).append("\trow ").append(i).append(' ').append("x".repeat(80)).append('\n');
        }
        line("big copy in", copy.copyIn("COPY big FROM STDIN", new StringReader(bigText.toString())));
        StringWriter bigOut = new StringWriter();
        line("big copy out", copy.copyOut("COPY (SELECT * FROM big ORDER BY id) TO STDOUT", bigOut));
        line("big copy out", "same as in=" + bigOut.toString().contentEquals(bigText), "sha256=" + sha256(bigOut.toString()));
        query("alive", "SELECT 'alive'");
    }

    private static String sha256(String text) {
        try {
            StringBuilder sb = new StringBuilder();
            for (byte b : MessageDigest.getInstance("SHA-256").digest(text.getBytes(StandardCharsets.UTF_8))) {
                sb.append(String.format("%02x", b));
            }
            return sb.toString();
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }

    /** Statement.cancel() from another thread on pg_sleep(30), setQueryTimeout, then the connection still works. */
    private void cancel() throws Exception {
        int pid = conn.unwrap(PGConnection.class).getBackendPID();
        try (Statement st = conn.createStatement()) {
            // Statement.cancel() does nothing unless the statement is executing, and a cancel request that
            // reaches the server before the query does is lost: so ask again until the query has ended.
            AtomicBoolean finished = new AtomicBoolean();
            AtomicReference<SQLException> cancelFailure = new AtomicReference<>();
            Thread canceller = new Thread(() -> {
                try {
                    Thread.sleep(500);
                    while (!finished.get()) {
                        st.cancel();
                        Thread.sleep(2000);
                    }
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();  // the query has ended: stop asking
                } catch (SQLException e) {
                    cancelFailure.set(e);
                }
            });
            canceller.start();
            long begin = System.nanoTime();
            try {
                st.executeQuery("SELECT pg_sleep(30)");
                line("cancel", "query completed");
            } catch (SQLException e) {
                error(e);
            } finally {
                finished.set(true);
            }
            canceller.interrupt();
            canceller.join(10000);
            if (cancelFailure.get() != null) {
                line("cancel request failed");
                error(cancelFailure.get());
            }
            line("cancelled within 15 s", System.nanoTime() - begin < TimeUnit.SECONDS.toNanos(15));
        }
        query("usable", "SELECT 'usable', pg_backend_pid() = " + pid);
        conn.setAutoCommit(false);
        try (PreparedStatement ps = conn.prepareStatement("SELECT pg_sleep(?)")) {
            ps.setQueryTimeout(1);
            ps.setInt(1, 30);
            long begin = System.nanoTime();
            try {
                ps.executeQuery();
                line("timeout", "query completed");
            } catch (SQLException e) {
                error(e);
            }
            line("timed out within 15 s", System.nanoTime() - begin < TimeUnit.SECONDS.toNanos(15));
        }
        conn.rollback();
        conn.setAutoCommit(true);
        query("usable again", "SELECT 'usable', pg_backend_pid() = " + pid);
    }

    /** DatabaseMetaData for a table of our own: getTables, getColumns, getPrimaryKeys, getIndexInfo. */
    private void metadata() throws SQLException {
        String table = "jdbc_meta_" + tag;
        conn.setAutoCommit(false);  // the table never outlives the run: everything is rolled back
        update("CREATE TABLE " + table + " (id serial PRIMARY KEY, name varchar(40) NOT NULL, "
                + "amount numeric(10, 2), created timestamptz DEFAULT now(), tags text[], doc jsonb)");
        update("CREATE INDEX " + table + "_name ON " + table + " (name)");
        update("COMMENT ON TABLE " + table + " IS 'probe table'");
        DatabaseMetaData md = conn.getMetaData();
        line("product", md.getDatabaseProductName(), md.getDatabaseMajorVersion(),
                md.getDriverName(), md.supportsTransactions(), md.getIdentifierQuoteString());
        try (ResultSet rs = md.getTables(null, "public", table, new String[] {"TABLE"})) {
            while (rs.next()) {
                line("table", rs.getString("TABLE_CAT"), rs.getString("TABLE_SCHEM"), rs.getString("TABLE_NAME"),
                        rs.getString("TABLE_TYPE"), rs.getString("REMARKS"));
            }
        }
        try (ResultSet rs = md.getColumns(null, "public", table, "%")) {
            while (rs.next()) {
                line("column", rs.getString("COLUMN_NAME"), rs.getInt("DATA_TYPE"), rs.getString("TYPE_NAME"),
                        rs.getInt("COLUMN_SIZE"), rs.getInt("DECIMAL_DIGITS"), rs.getInt("NULLABLE"),
                        rs.getString("COLUMN_DEF"), rs.getInt("ORDINAL_POSITION"), rs.getString("IS_NULLABLE"),
                        rs.getString("IS_AUTOINCREMENT"));
            }
        }
        try (ResultSet rs = md.getPrimaryKeys(null, "public", table)) {
            while (rs.next()) {
                line("pk", rs.getString("COLUMN_NAME"), rs.getInt("KEY_SEQ"), rs.getString("PK_NAME"));
            }
        }
        try (ResultSet rs = md.getIndexInfo(null, "public", table, false, false)) {
            while (rs.next()) {
                line("index", rs.getString("INDEX_NAME"), rs.getBoolean("NON_UNIQUE"), rs.getString("COLUMN_NAME"),
                        rs.getInt("ORDINAL_POSITION"));
            }
        }
        try (ResultSet rs = md.getTables(null, "public", "jdbc_meta_no_such_" + tag, null)) {
            line("missing table found", rs.next());
        }
        conn.rollback();
        conn.setAutoCommit(true);
        try (ResultSet rs = md.getTables(null, "public", table, null)) {
            line("after rollback found", rs.next());
        }
    }

    /** Settings passed in the startup packet's options (-c name=value), then a statement that outlives one. */
    private void startupOptions() throws SQLException {
        query("settings", "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), "
                + "current_setting('IntervalStyle'), current_setting('application_name') LIKE '%JDBC%'");
        try (Statement st = conn.createStatement()) {
            st.executeQuery("SELECT pg_sleep(30)");
            line("sleep", "completed");
        } catch (SQLException e) {
            error(e);
        }
        query("alive", "SELECT 'alive'");
    }

    /** The large-object API: pgjdbc drives lo_* through the protocol's FunctionCall (fastpath) message. */
    private void largeObject() throws SQLException {
        conn.setAutoCommit(false);
        LargeObjectManager lom = conn.unwrap(PGConnection.class).getLargeObjectAPI();
        long oid = lom.createLO(LargeObjectManager.READWRITE);
        byte[] data = new byte[300000];
        for (int i = 0; i < data.length; i++) {
            data[i] = (byte) (i * 31 + i / 256);
        }
        LargeObject lo = lom.open(oid, LargeObjectManager.READWRITE);
        lo.write(data);
        line("size", lo.size(), "tell=" + lo.tell());
        lo.seek(1000);
        line("read at 1000", lo.read(16));
        lo.seek(-16, LargeObject.SEEK_END);
        line("read last", lo.read(16));
        lo.truncate(100000);
        line("truncated", lo.size());
        lo.close();
        LargeObject again = lom.open(oid, LargeObjectManager.READ);
        byte[] back = again.read(200000);
        line("read back", back.length, "same=" + java.util.Arrays.equals(back, java.util.Arrays.copyOf(data, 100000)));
        again.close();
        try {
            lom.open(1L, LargeObjectManager.READ);  // no large object has oid 1
            line("open missing", "no error");
        } catch (SQLException e) {
            error(e);
        }
        conn.rollback();
        lom = conn.unwrap(PGConnection.class).getLargeObjectAPI();
        long second = lom.createLO();
        LargeObject lo2 = lom.open(second, LargeObjectManager.WRITE);
        lo2.write("hello ü".getBytes(StandardCharsets.UTF_8));
        lo2.close();
        query("via sql", "SELECT convert_from(lo_get(" + second + "), 'UTF8'), lo_unlink(" + second + ")");
        conn.commit();
        conn.setAutoCommit(true);
    }

    /** Eight connections at once, each on its own thread, each with its own prepared statements and rows. */
    private void parallel() throws Exception {
        int threads = 8;
        String[] results = new String[threads];
        Exception[] failures = new Exception[threads];
        List<Thread> running = new ArrayList<>();
        for (int t = 0; t < threads; t++) {
            int me = t;
            Thread thread = new Thread(() -> {
                try (Connection c = DriverManager.getConnection(url, props)) {
                    c.setAutoCommit(false);
                    long sum = 0;
                    int rows = 0;
                    try (PreparedStatement ps = c.prepareStatement(
                            "SELECT g, md5(g::text || ?::text) FROM generate_series(1, ?) g")) {
                        ps.setFetchSize(50);
                        for (int run = 0; run < 40; run++) {
                            ps.setString(1, "t" + me);
                            ps.setInt(2, 100 + run + me);
                            try (ResultSet rs = ps.executeQuery()) {
                                while (rs.next()) {
                                    sum += rs.getInt(1) + rs.getString(2).charAt(0);
                                    rows++;
                                }
                            }
                        }
                    }
                    c.commit();
                    results[me] = "thread " + me + "|rows=" + rows + "|sum=" + sum;
                } catch (Exception e) {
                    failures[me] = e;
                }
            });
            thread.start();
            running.add(thread);
        }
        for (Thread thread : running) {
            thread.join(60000);
        }
        for (int t = 0; t < threads; t++) {
            if (failures[t] != null) {
                throw failures[t];
            }
            line(results[t]);
        }
    }

    /** LISTEN and NOTIFY on one connection: notifications arrive with this backend's pid. */
    private void notifyScenario() throws SQLException {
        String channel = "jdbc_" + tag;
        int pid = conn.unwrap(PGConnection.class).getBackendPID();
        update("LISTEN " + channel);
        update("NOTIFY " + channel + ", 'hello ü'");
        try (PreparedStatement ps = conn.prepareStatement("SELECT pg_notify(?, ?)")) {
            ps.setString(1, channel);
            ps.setString(2, "second");
            ps.executeQuery().close();
        }
        List<String> got = new ArrayList<>();
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
        while (got.size() < 2 && System.nanoTime() < deadline) {
            PGNotification[] notes = conn.unwrap(PGConnection.class).getNotifications(500);
            if (notes != null) {
                for (PGNotification n : notes) {
                    got.add(n.getName() + "|" + n.getParameter() + "|own pid=" + (n.getPID() == pid));
                }
            }
        }
        for (String n : got) {
            line("notification", n);
        }
        update("UNLISTEN *");
    }
}
