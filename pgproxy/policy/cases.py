"""The policy test-case language (``policies/tests/*.yaml``) and the identity spec of ``policy explain``.

Pydantic models only, in the same strict style as the policy model: frozen, unknown keys refused.
Running the cases is ``tooling``'s job; reading the files is ``loader``'s.

A case names an identity, a database and (usually) SQL, and what should happen::

    cases:
      - name: agent may read customers
        identity: {sub: agent-7, email: agent7@example.com, groups: [ai-agents]}
        database: app
        sql: SELECT name FROM customers
        expect: allow                        # or {effect: deny, rule: agents-no-privilege}

``expect`` is an effect name, or a mapping of any of ``effect``, ``rule``, ``notify`` (the decision),
``connect`` and ``read_only`` (the session). ``connect: false`` expects the session to be refused and
needs no SQL.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, model_validator

from pgproxy.auth.identity import Identity
from pgproxy.policy.model import Effect

__all__ = ["DEFAULT_ISSUER", "Case", "CaseFile", "Expectation", "IdentitySpec"]

DEFAULT_ISSUER = "https://issuer.invalid/"  # used when a case or `explain` names no issuer


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class IdentitySpec(_Model):
    """An identity as a token would carry it; without ``sub`` the email (else "anonymous") stands in."""

    sub: Annotated[str, Field(min_length=1)] | None = None
    iss: Annotated[str, Field(min_length=1)] = DEFAULT_ISSUER
    email: Annotated[str, Field(min_length=1)] | None = None
    name: Annotated[str, Field(min_length=1)] | None = None
    groups: tuple[Annotated[str, Field(min_length=1)], ...] = ()

    def identity(self) -> Identity:
        return Identity(
            subject=self.sub or self.email or "anonymous",
            issuer=self.iss,
            email=self.email,
            name=self.name,
            groups=tuple(dict.fromkeys(self.groups)),
            expires_at=None,
        )


def _effect_shorthand(value: Any) -> Any:
    return {"effect": value} if isinstance(value, str) else value


class Expectation(_Model):
    effect: Effect | None = None
    rule: Annotated[str, Field(min_length=1)] | None = None
    notify: StrictBool | None = None
    connect: StrictBool | None = None
    read_only: StrictBool | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Expectation:
        if self.connect is False and (self.effect, self.rule, self.notify, self.read_only) != (None,) * 4:
            raise ValueError("'connect: false' expects a refused session; it cannot also expect a decision")
        if (self.effect, self.rule, self.notify, self.connect, self.read_only) == (None,) * 5:
            raise ValueError("expect at least one of effect, rule, notify, connect, read_only")
        return self

    @property
    def needs_sql(self) -> bool:
        return self.effect is not None or self.rule is not None or self.notify is not None


class Case(_Model):
    name: Annotated[str, Field(min_length=1)]
    identity: IdentitySpec
    database: Annotated[str, Field(min_length=1)]
    sql: Annotated[str, Field(min_length=1)] | None = None
    expect: Annotated[Expectation, BeforeValidator(_effect_shorthand)]

    @model_validator(mode="after")
    def _sql_when_deciding(self) -> Case:
        if self.expect.needs_sql and self.sql is None:
            raise ValueError("a case that expects a decision needs 'sql'")
        return self


class CaseFile(_Model):
    cases: Annotated[tuple[Case, ...], Field(min_length=1)]
