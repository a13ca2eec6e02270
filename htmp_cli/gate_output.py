"""Views of a gate verdict: the terminal summary, JUnit XML, Markdown, GitHub Actions annotations."""

from __future__ import annotations

from xml.etree import ElementTree as ET

from rich.console import Console
from rich.table import Table

from htmp_cli.gate import Rule, Verdict, Violation


def _by_rule(verdict: Verdict) -> dict[str, list[Violation]]:
    grouped: dict[str, list[Violation]] = {rule.name: [] for rule in verdict.rules}
    for violation in verdict.violations:
        grouped[violation.rule.name].append(violation)
    return grouped


def headline(verdict: Verdict, source: str) -> str:
    failed = sum(1 for v in _by_rule(verdict).values() if v and v[0].rule.severity == "error")
    warned = sum(1 for v in _by_rule(verdict).values() if v and v[0].rule.severity == "warning")
    state = "PASSED" if verdict.passed else "FAILED"
    return (f"htmp check {state}: {source}: {_count(len(verdict.rules), 'rule')}, {failed} failed, {warned} with warnings "
            f"({_count(len(verdict.errors), 'error')}, {_count(len(verdict.warnings), 'warning')})")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def render_verdict(verdict: Verdict, source: str, console: Console) -> None:
    if verdict.violations:
        table = Table(title="Rules that fired", title_justify="left", header_style="bold")
        for column in ("severity", "rule", "layer", "value", "why"):
            table.add_column(column, overflow="fold")
        for violation in verdict.violations:
            rule = violation.rule
            table.add_row(rule.severity, f"{rule.name}: {rule.what}", violation.layer or "(model)", violation.message,
                          rule.reason or "", style="red" if rule.severity == "error" else "yellow")
        console.print(table)
    console.print("Rules, and the layers each looked at:", highlight=False)
    fired = {v.rule.name for v in verdict.violations}
    for rule in verdict.rules:
        state = ("FAILED" if rule.severity == "error" else "warned") if rule.name in fired else "held"
        console.print(f"  {rule.name} ({rule.severity}, {state}): {rule.what}; "
                      f"{verdict.looked_at.get(rule.name, '')}", highlight=False)
    style = "bold green" if verdict.passed else "bold red"
    console.print(f"[{style}]{headline(verdict, source)}[/{style}]", highlight=False)


def to_junit(verdict: Verdict, source: str) -> str:
    """One test case per rule and layer group: a rule's violations are one failing case each; a rule
    that held is one passing case."""
    suite = ET.Element("testsuite", name="htmp check", tests="0", failures="0", errors="0", skipped="0")
    cases = failures = 0
    for name, violations in _by_rule(verdict).items():
        rule = next(r for r in verdict.rules if r.name == name)
        if not violations:
            ET.SubElement(suite, "testcase", classname=f"htmp.{name}", name=f"{rule.what} ({verdict.checked_layers.get(name, 0)} layers)")
            cases += 1
            continue
        for violation in violations:
            case = ET.SubElement(suite, "testcase", classname=f"htmp.{name}", name=violation.layer or "(model)")
            cases += 1
            text = f"{rule.what}: {violation.message}" + (f". {rule.reason}" if rule.reason else "")
            if rule.severity == "error":
                failures += 1
                ET.SubElement(case, "failure", message=text, type=name).text = text
            else:
                ET.SubElement(case, "system-out").text = f"warning: {text}"
    suite.set("tests", str(cases))
    suite.set("failures", str(failures))
    suite.set("name", f"htmp check {source}")
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def to_markdown(verdict: Verdict, source: str) -> str:
    icon = ":white_check_mark:" if verdict.passed else ":x:"
    lines = [f"### {icon} {headline(verdict, source)}", ""]
    if verdict.violations:
        lines += ["| severity | rule | layer | value | why |", "|---|---|---|---|---|"]
        for v in verdict.violations:
            cells = [v.rule.severity, f"{v.rule.name}: {v.rule.what}", v.layer or "(model)", v.message, v.rule.reason or ""]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    held = [r for r in verdict.rules if not any(v.rule.name == r.name for v in verdict.violations)]
    if held:
        lines.append("Rules that held: " + ", ".join(f"`{r.name}`" for r in held))
        lines.append("")
    lines += ["Rules, and the layers each looked at:", ""]
    lines += [f"- `{r.name}` ({r.severity}): {r.what}; {verdict.looked_at.get(r.name, '')}" for r in verdict.rules]
    return "\n".join(lines) + "\n"


def github_annotations(verdict: Verdict, source: str) -> list[str]:
    """Workflow commands GitHub Actions turns into annotations on the run."""
    def escape(text: str) -> str:
        return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")

    lines = []
    for v in verdict.violations:
        rule: Rule = v.rule
        level = "error" if rule.severity == "error" else "warning"
        title = escape(f"htmp {rule.name}").replace(",", "%2C").replace("::", "%3A%3A")
        text = f"{v.layer or source}: {v.message}" + (f" ({rule.reason})" if rule.reason else "")
        lines.append(f"::{level} title={title}::{escape(text)}")
    return lines
