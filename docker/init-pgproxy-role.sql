-- pgproxy's upstream login: no superuser, no server file or program access.
CREATE ROLE pgproxy LOGIN PASSWORD 'pgproxy-change-me' NOSUPERUSER NOCREATEROLE NOCREATEDB;
GRANT CONNECT ON DATABASE postgres TO pgproxy;
