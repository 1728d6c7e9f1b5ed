"""``pgproxy policy check | explain | test``: the operator's view of a policy directory.

Each command is a function returning a :class:`Report` (the text to print and the exit code) so
that the CLI only prints and tests only compare strings. Loading goes through ``loader`` and
deciding through ``engine``, exactly as the proxy does; SQL is classified by the same classifier.
This module must not be imported by the proxy itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from pgproxy.auth.identity import Identity
from pgproxy.policy.analysis import find_problems
from pgproxy.policy.cases import Case, CaseFile, IdentitySpec
from pgproxy.policy.engine import Decision, SessionProfile, decide_all, describe_duration, session_profile
from pgproxy.policy.loader import PolicyLoadError, load_policy_dir, load_yaml_file, load_yaml_text, policy_files
from pgproxy.policy.model import Mask, PolicySet, Rule, SessionSettings
from pgproxy.reporting import Report
from pgproxy.sql.statement import Classification, Statement

__all__ = ["Classify", "Report", "check", "explain", "identity_from_options", "run_tests"]

Classify = Callable[[str], Classification]


def default_classify() -> Classify:
    from pgproxy.sql.classify import Classifier  # noqa: PLC0415  (pglast loads only when SQL is classified)

    return Classifier().classify


def _load(directory: Path) -> PolicySet | Report:
    try:
        return load_policy_dir(directory)
    except PolicyLoadError as exc:
        lines = [str(problem) for problem in exc.problems]
        count = len(exc.problems)
        lines.append(f"policies in {directory} do not load: {count} problem{'s' if count != 1 else ''}")
        return Report("\n".join(lines) + "\n", 1)


# ---------------------------------------------------------------------------------------------
# check


def check(directory: Path) -> Report:
    """List every file's entries; warn about rules that never decide. Exit 1 on a load error or a warning."""
    loaded = _load(directory)
    if isinstance(loaded, Report):
        return loaded
    policy_set = loaded
    lines: list[str] = []
    for path in policy_files(directory):
        lines.append(str(path))
        entries = [
            *(_rule_line(r) for r in policy_set.rules if _in(policy_set, r.id, path)),
            *(_session_line(s) for s in policy_set.sessions if _in(policy_set, s.id, path)),
            *(_mask_line(m) for m in policy_set.masks if _in(policy_set, m.id, path)),
        ]
        lines.extend(f"  {entry}" for entry in entries or ["(no entries)"])
    findings = find_problems(policy_set)
    for finding in findings:
        where = policy_set.source(finding.entry_id)
        lines.append(f"{where}: warning: {finding.entry_id} {finding.message}")
    counts = (
        f"{_plural(len(policy_files(directory)), 'file')}, {_plural(len(policy_set.rules), 'rule')}, "
        f"{_plural(len(policy_set.sessions), 'session setting')}, {_plural(len(policy_set.masks), 'mask')}"
    )
    lines.append(f"{counts}: {_plural(len(findings), 'warning')}" if findings else f"{counts}: no problems found")
    return Report("\n".join(lines) + "\n", 1 if findings else 0)


def _in(policy_set: PolicySet, entry_id: str, path: Path) -> bool:
    source = policy_set.source(entry_id)
    return source is not None and source.file == str(path)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _rule_line(rule: Rule) -> str:
    parts = [
        f"rule {rule.id}: {rule.effect.value}",
        f"who: {rule.who.describe()}",
        f"databases: {', '.join(rule.databases)}",
        f"categories: {', '.join(rule.categories)}",
    ]
    if rule.tables is not None:
        parts.append(f"tables: {', '.join(rule.tables)}")
    if rule.approval is not None:
        parts.append(
            f"approvers: {rule.approval.approvers.describe()} (quorum {rule.approval.quorum}, "
            f"timeout {describe_duration(rule.approval.timeout)})"
        )
    if rule.notify:
        parts.append("notify")
    return "; ".join(parts)


def _session_line(entry: SessionSettings) -> str:
    parts = [f"session {entry.id}", f"who: {entry.who.describe()}", f"databases: {', '.join(entry.databases)}"]
    if entry.upstream_role is not None:
        parts.append(f"upstream role: {entry.upstream_role}")
    if entry.read_only is not None:
        parts.append(f"read-only: {'yes' if entry.read_only else 'no'}")
    if entry.limits is not None:
        parts.append(f"limits: {_limits(entry.limits.max_rows, entry.limits.max_export_rows)}")
    return "; ".join(parts)


def _limits(max_rows: int | None, max_export_rows: int | None) -> str:
    pairs = [("max_rows", max_rows), ("max_export_rows", max_export_rows)]
    return ", ".join(f"{name}={value}" for name, value in pairs if value is not None)


def _mask_line(mask: Mask) -> str:
    who = mask.who.describe() + (f" except {mask.exempt.describe()}" if mask.exempt else "")
    columns = ", ".join(f"{name}={spec.describe()}" for name, spec in mask.columns.items())
    parts = [f"mask {mask.id}", f"who: {who}", f"databases: {', '.join(mask.databases)}", f"columns: {columns}"]
    if mask.refuse_predicates:
        parts.append("refuse_predicates")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# explain


def identity_from_options(
    *,
    spec: str | None = None,
    sub: str | None = None,
    email: str | None = None,
    groups: Sequence[str] = (),
    issuer: str | None = None,
    name: str | None = None,
) -> Identity:
    """An identity from ``--identity '{sub: …, groups: […]}'`` (YAML, as in test cases) and/or single flags.

    Flags override the spec's fields; ``--group`` adds to its groups. Without a subject the email stands
    in for it. Raises :class:`PolicyLoadError` for an invalid spec.
    """
    base = load_yaml_text(spec, IdentitySpec, "--identity")[0] if spec else IdentitySpec()
    return IdentitySpec(
        sub=sub or base.sub,
        iss=issuer or base.iss,
        email=email or base.email,
        name=name or base.name,
        groups=(*base.groups, *groups),
    ).identity()


def explain(
    directory: Path, identity: Identity, database: str, sql: str, *, classify: Classify | None = None
) -> Report:
    """Show how SQL is classified and decided for one identity on one database, and the session profile."""
    loaded = _load(directory)
    if isinstance(loaded, Report):
        return loaded
    classification = (classify or default_classify())(sql)
    profile = session_profile(loaded, identity, database)
    lines = [
        f"identity: {_describe_identity(identity)}",
        f"database: {database}",
        *_profile_lines(profile, database),
    ]
    read_only = profile.read_only if profile else True
    if classification.unparseable:
        lines.append("the text could not be split into statements")
    for number, statement in enumerate(classification.statements, 1):
        decision = decide_all(loaded, identity, database, [statement], read_only=read_only)
        lines.append(f"statement {number}: {statement.command}")
        lines.extend(f"  {line}" for line in _statement_lines(statement))
        lines.extend(f"  {line}" for line in _decision_lines(decision))
    if len(classification.statements) > 1:
        decision = decide_all(loaded, identity, database, classification.statements, read_only=read_only)
        number = next(i for i, s in enumerate(classification.statements, 1) if s is decision.statement)
        lines.append(f"message: {_verdict(decision)} (decided by statement {number})")
    return Report("\n".join(lines) + "\n", 0)


def _describe_identity(identity: Identity) -> str:
    parts = [f"subject={identity.subject}", f"issuer={identity.issuer}"]
    if identity.email:
        parts.append(f"email={identity.email}")
    if identity.groups:
        parts.append(f"groups={','.join(identity.groups)}")
    return " ".join(parts)


def _profile_lines(profile: SessionProfile | None, database: str) -> list[str]:
    if profile is None:
        return [f"session: refused (no allow or require_approval rule names this identity on database {database})"]
    lines = [
        "session: admitted",
        f"  read-only: {'yes' if profile.read_only else 'no'}",
        "  upstream role: " + (profile.upstream_role or "(pgproxy's own login)"),
    ]
    if profile.limits is not None:
        lines.append(f"  limits: {_limits(profile.limits.max_rows, profile.limits.max_export_rows)}")
    masked = [f"{name} ({mask.id})" for mask in profile.masks for name in mask.columns]
    lines.append(f"  masked columns: {', '.join(masked) if masked else '-'}")
    lines.append(f"  rules that apply: {', '.join(profile.rule_ids)}")
    if profile.settings_id:
        lines.append(f"  session settings: {profile.settings_id}")
    return lines


def _statement_lines(statement: Statement) -> list[str]:
    def listed(items: frozenset[object] | frozenset[str]) -> str:
        return ", ".join(sorted(str(item) for item in items)) or "-"

    lines = [
        f"category: {statement.category.value}",
        f"reads: {listed(frozenset(statement.reads))}",
        f"writes: {listed(frozenset(statement.writes))}",
        f"functions: {listed(statement.functions)}",
    ]
    if statement.unsafe_functions:
        lines.append(f"unsafe functions: {listed(statement.unsafe_functions)}")
    lines.append(f"flags: {listed(frozenset(f.value for f in statement.flags))}")
    if statement.setting is not None:
        lines.append(f"setting: {statement.setting}")
    if statement.refusal is not None:
        lines.append(f"refused: {statement.refusal}")
    if statement.reason is not None:
        lines.append(f"not classified: {statement.reason}")
    for label, inner in (("explains", statement.explained), ("prepares", statement.prepared)):
        if inner is not None:
            lines.append(f"{label}: {inner.command} ({inner.category.value})")
    return lines


def _verdict(decision: Decision) -> str:
    return f"{decision.effect.value} by rule {decision.rule_id}" + (" (notify)" if decision.notify else "")


def _decision_lines(decision: Decision) -> list[str]:
    lines = [f"decision: {_verdict(decision)}", f"reason: {decision.reason}"]
    if decision.hint:
        lines.append(f"hint: {decision.hint}")
    if decision.approval is not None:
        lines.append(
            f"approval: {decision.approval.describe()} within {describe_duration(decision.approval.timeout_seconds)}"
        )
    return lines


# ---------------------------------------------------------------------------------------------
# test


def run_tests(directory: Path, *, classify: Classify | None = None) -> Report:
    """Run every case of ``DIR/tests/*.yaml`` against the policies of ``DIR``. Exit 1 on any failure."""
    loaded = _load(directory)
    if isinstance(loaded, Report):
        return loaded
    tests = directory / "tests"
    files = policy_files(tests) if tests.is_dir() else []
    if not files:
        return Report(f"{tests}: no test files (*.yaml, *.yml)\n", 1)
    lines: list[str] = []
    problems: list[str] = []
    passed = failed = 0
    run = classify or default_classify()
    for path in files:
        try:
            case_file, _ = load_yaml_file(path, CaseFile)
        except PolicyLoadError as exc:
            problems.extend(str(problem) for problem in exc.problems)
            continue
        lines.append(str(path))
        for case in case_file.cases:
            failure, actual = _run_case(loaded, case, run)
            lines.append(f"  {'FAIL' if failure else 'ok  '} {case.name}: {actual}")
            if failure:
                lines.append(f"       {failure}")
                failed += 1
            else:
                passed += 1
    lines.extend(problems)
    summary = f"{passed} passed, {failed} failed"
    if problems:
        summary += f", {_plural(len(problems), 'problem')} in test files"
    lines.append(summary)
    return Report("\n".join(lines) + "\n", 1 if failed or problems else 0)


def _run_case(policy_set: PolicySet, case: Case, classify: Classify) -> tuple[str | None, str]:
    """(why the case fails or None, what actually happened)."""
    identity = case.identity.identity()
    expect = case.expect
    profile = session_profile(policy_set, identity, case.database)
    failures: list[str] = []
    actual = ["session refused"] if profile is None else []
    if expect.connect is not None and expect.connect != (profile is not None):
        failures.append(f"expected the session to be {'admitted' if expect.connect else 'refused'}")
    if expect.read_only is not None and profile is not None and profile.read_only != expect.read_only:
        failures.append(f"expected read_only {expect.read_only}, got {profile.read_only}")
    elif expect.read_only is not None and profile is None:
        failures.append(f"expected a session with read_only {expect.read_only}, but it is refused")
    if case.sql is not None:
        statements = classify(case.sql).statements
        if not statements:
            return "the SQL holds no statement", "nothing to decide"
        read_only = profile.read_only if profile else True
        decision = decide_all(policy_set, identity, case.database, statements, read_only=read_only)
        actual.append(_verdict(decision))
        if profile is None and expect.effect is not None and expect.effect.value != "deny":
            failures.append(f"expected {expect.effect.value}, but the session is refused")
        if expect.effect is not None and decision.effect is not expect.effect:
            failures.append(f"expected {expect.effect.value}: {decision.reason}")
        if expect.rule is not None and decision.rule_id != expect.rule:
            failures.append(f"expected rule {expect.rule}, got {decision.rule_id}")
        if expect.notify is not None and decision.notify != expect.notify:
            failures.append(f"expected notify {expect.notify}, got {decision.notify}")
    elif profile is not None:
        actual.append(f"session admitted (read-only: {'yes' if profile.read_only else 'no'})")
    return ("; ".join(failures) or None), ", ".join(actual)
