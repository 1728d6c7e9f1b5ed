"""SQLAlchemy 2 (Core and ORM, over psycopg 3) through pgproxy: DDL, CRUD, relationships, reflection and
connection pooling must give the same results as a direct engine.

Each test runs its work on a direct engine, then on a proxied one, against the same fresh schema name
(created and dropped around each run), so even reflected defaults that name the schema compare equal.
"""

from __future__ import annotations

import datetime as dt
import decimal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, ForeignKey, MetaData, Numeric, String, Text, func, inspect, select
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, joinedload, mapped_column, relationship, selectinload

from tests.support.compare import unique_name
from tests.support.pg_plugin import UPSTREAM_ROLE, RealPostgres
from tests.support.proxy_plugin import RunningProxy

pytestmark = pytest.mark.integration
T = TypeVar("T")
SCHEMA = "app"  # translated to a unique schema per run with schema_translate_map


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    email: Mapped[str | None]
    books: Mapped[list[Book]] = relationship(back_populates="author", order_by="Book.id",
                                             cascade="all, delete-orphan")


class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"), index=True)
    title: Mapped[str] = mapped_column(Text)
    price: Mapped[decimal.Decimal] = mapped_column(Numeric(8, 2))
    published: Mapped[dt.date | None]
    tags: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(10), server_default=sa.text("'draft'"))
    author: Mapped[Author] = relationship(back_populates="books")


def direct_engine(postgres: RealPostgres, **options: Any) -> Engine:
    return sa.create_engine(postgres.dsn(UPSTREAM_ROLE).replace("postgresql://", "postgresql+psycopg://", 1),
                            **options)


def proxied_engine(proxy: RunningProxy, **options: Any) -> Engine:
    return sa.create_engine(proxy.url(scheme="postgresql+psycopg"), **options)


@contextmanager
def fresh_schema(engine: Engine, schema: str) -> Iterator[Engine]:
    """``engine`` with ``app`` translated to ``schema``, which exists (with the tables) only inside the block."""
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    translated = engine.execution_options(schema_translate_map={SCHEMA: schema})
    try:
        Base.metadata.create_all(translated)
        yield translated
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def both(proxy: RunningProxy, postgres: RealPostgres, work: Callable[[Engine, str], T], **options: Any) -> tuple[T, T]:
    schema = unique_name("sa")
    results: list[T] = []
    for engine in (direct_engine(postgres, **options), proxied_engine(proxy, **options)):
        with fresh_schema(engine, schema) as translated:
            results.append(work(translated, schema))
    return results[0], results[1]


def seed(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        for a in range(5):
            author = Author(name=f"author {a}", email=None if a % 2 else f"a{a}@example.com")
            author.books = [
                Book(title=f"book {a}.{b} — ü", price=decimal.Decimal(f"{a}{b}.25"),
                     published=dt.date(2000 + a, 1 + b, 1) if b else None, tags=[f"t{b}", "common"],
                     meta={"pages": 100 * b, "rating": [a, b]} if b % 2 else None)
                for b in range(a + 1)
            ]
            session.add(author)


def test_core_crud(proxy: RunningProxy, postgres: RealPostgres) -> None:
    authors, books = cast(sa.Table, Author.__table__), cast(sa.Table, Book.__table__)

    def work(engine: Engine, schema: str) -> list[Any]:
        out: list[Any] = []
        with engine.begin() as conn:
            ids = conn.execute(
                sa.insert(authors).returning(authors.c.id, authors.c.name),
                [{"name": f"core {i}", "email": f"c{i}@example.com"} for i in range(10)],
            ).all()
            out.append([tuple(row) for row in ids])
            conn.execute(sa.insert(books), [
                {"author_id": ids[i % 10][0], "title": f"title {i}", "price": decimal.Decimal(i) / 4,
                 "tags": ["x"] * (i % 3), "meta": {"i": i}} for i in range(40)
            ])
            out.append(conn.execute(select(func.count()).select_from(books)).scalar_one())
        with engine.connect() as conn:
            query = (
                select(authors.c.name, func.count(books.c.id), func.sum(books.c.price), func.array_agg(books.c.title))
                .join(books).group_by(authors.c.name).order_by(authors.c.name)
            )
            out.append([tuple(row) for row in conn.execute(query)])
            out.append(tuple(conn.execute(select(books.c.meta, books.c.tags, books.c.status)
                                          .where(books.c.title == sa.bindparam("t")), {"t": "title 5"}).one()))
            updated = conn.execute(sa.update(books).where(books.c.price > 5).values(status="sale"))
            out.append(updated.rowcount)
            conn.execute(sa.delete(books).where(books.c.author_id == ids[9][0]))
            gone = conn.execute(sa.delete(authors).where(authors.c.name == "core 9").returning(authors.c.email))
            out.append(gone.all())
            conn.rollback()
            out.append(conn.execute(select(func.count()).select_from(authors)).scalar_one())
            conn.commit()
            with conn.begin():
                conn.execute(sa.update(books).where(books.c.price > 5).values(status="sale"))
            out.append(conn.execute(select(books.c.status, func.count()).group_by(books.c.status)
                                    .order_by(books.c.status)).all())
            out.append(conn.execute(sa.text(f'SELECT count(*) FROM "{schema}".books WHERE price > :p'),
                                    {"p": 1}).scalar_one())
        return out

    direct, proxied = both(proxy, postgres, work)
    assert proxied == direct
    assert proxied[1] == 40 and proxied[4] == 19 and proxied[5] == [("c9@example.com",)]
    assert proxied[6] == 10 and proxied[7] == [("draft", 21), ("sale", 19)] and proxied[8] == 35


def test_orm_relationships(proxy: RunningProxy, postgres: RealPostgres) -> None:
    def work(engine: Engine, schema: str) -> list[Any]:
        seed(engine)
        out: list[Any] = []
        with Session(engine) as session:
            authors = session.scalars(select(Author).options(selectinload(Author.books)).order_by(Author.id)).all()
            out.append([(a.name, a.email, [(b.title, b.price, b.published, b.tags, b.meta, b.status)
                                           for b in a.books]) for a in authors])
            books = session.scalars(select(Book).options(joinedload(Book.author))
                                    .where(Book.price > decimal.Decimal("30")).order_by(Book.price.desc())).all()
            out.append([(b.title, b.author.name) for b in books])
            rows = session.execute(
                select(Author.name, func.count(Book.id)).join(Author.books).where(Book.meta.is_not(None))
                .group_by(Author.name).order_by(Author.name)
            ).all()
            out.append([tuple(row) for row in rows])
            out.append(session.scalars(select(Book.title).where(Book.tags.contains(["t2"])).order_by(Book.id)).all())
            out.append(session.scalars(select(Book.title).where(Book.meta["pages"].as_integer() >= 300)).all())
        with Session(engine) as session, session.begin():
            author = session.scalars(select(Author).where(Author.name == "author 3")).one()
            author.email = "changed@example.com"
            author.books[0].title = "renamed"
            author.books.pop()  # delete-orphan
            session.delete(session.scalars(select(Author).where(Author.name == "author 1")).one())
        with Session(engine) as session:
            out.append(session.execute(select(Author.name, Author.email).order_by(Author.id)).all())
            out.append(session.scalars(select(Book.title).order_by(Book.id)).all())
        with Session(engine) as session:
            try:
                with session.begin():
                    session.add(Author(name="author 0"))
            except sa.exc.IntegrityError as exc:
                out.append(type(exc.orig).__name__)
            out.append(session.scalar(select(func.count()).select_from(Author)))
        return out

    direct, proxied = both(proxy, postgres, work)
    assert proxied == direct
    assert len(proxied[0]) == 5 and [len(books) for _, _, books in proxied[0]] == [1, 2, 3, 4, 5]
    assert "renamed" in proxied[6] and proxied[7:] == ["UniqueViolation", 4]


def test_reflection(proxy: RunningProxy, postgres: RealPostgres) -> None:
    def work(engine: Engine, schema: str) -> list[Any]:
        inspector = inspect(engine)
        out: list[Any] = [sorted(inspector.get_table_names(schema=schema))]
        for table in ("authors", "books"):
            out.append([(c["name"], str(c["type"]), c["nullable"], c["default"], c.get("autoincrement"))
                        for c in inspector.get_columns(table, schema=schema)])
            out.append(inspector.get_pk_constraint(table, schema=schema))
            out.append(inspector.get_foreign_keys(table, schema=schema))
            out.append(sorted(inspector.get_indexes(table, schema=schema), key=lambda index: str(index["name"])))
            out.append(inspector.get_unique_constraints(table, schema=schema))
        reflected = MetaData()
        reflected.reflect(engine, schema=schema)
        out.append(sorted((t.fullname, [c.name for c in t.columns]) for t in reflected.sorted_tables))
        return out

    direct, proxied = both(proxy, postgres, work)
    assert proxied == direct
    assert proxied[0] == ["authors", "books"]
    columns = {name: (kind, nullable, default) for name, kind, nullable, default, _ in proxied[6]}
    assert columns["price"][0] == "NUMERIC(8, 2)" and columns["tags"][0] == "ARRAY"
    assert columns["status"][2] == "'draft'::character varying"
    assert proxied[8][0]["referred_table"] == "authors"


def test_connection_pool_reuse(proxy: RunningProxy, postgres: RealPostgres) -> None:
    def pid(engine: Engine) -> int:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())

    def work(engine: Engine, schema: str) -> list[Any]:
        engine.dispose()
        sequential = [pid(engine) for _ in range(6)]
        barrier = threading.Barrier(2, timeout=20)
        concurrent: list[int] = []

        def hold() -> None:
            with engine.connect() as conn:
                concurrent.append(int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()))
                barrier.wait()  # both connections are checked out at once

        threads = [threading.Thread(target=hold) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        again = [pid(engine) for _ in range(4)]
        with engine.connect() as conn:
            conn.execute(sa.text("CREATE TEMP TABLE pooled(x int)"))
            conn.commit()
        with engine.connect() as conn:  # the same session: its temp table is still there
            temp = conn.execute(sa.text("SELECT count(*) FROM pooled")).scalar_one()
        pool = engine.pool
        assert isinstance(pool, sa.QueuePool)
        return [len(set(sequential)), len(set(concurrent)), len(set(again)), set(again) <= set(concurrent),
                sequential[0] in concurrent, temp, pool.checkedout(), pool.status()]

    direct, proxied = both(proxy, postgres, work, pool_size=2, max_overflow=0, pool_pre_ping=True,
                           pool_use_lifo=True)
    assert proxied == direct
    assert proxied[:7] == [1, 2, 1, True, True, 0, 0]
