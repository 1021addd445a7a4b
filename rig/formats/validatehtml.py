"""report.html of `rig validate`, beside validate.json: the verdict, both kernels, a row per
behaviour, and links to each kernel's replay page (its own report.html: readers, timeline,
CR-space map). Self-contained, like rig.formats.reporthtml, whose page and tables it uses."""

from __future__ import annotations

from pathlib import Path

from rig.formats.reporthtml import NAME, escape, page, table
from rig.jobs.behaviours import PASS, Outcome
from rig.jobs.verdict import REGRESSED, SAME, Verdict

REPLAY_PAGE = "{role}/replay/" + NAME  # where run_validate's replays write theirs


def render(verdict: Verdict) -> str:
    v = "PASS" if verdict.ok else "FAIL"
    what = (
        "no regression"
        if verdict.ok
        else f"the patched kernel regressed: {', '.join(verdict.regressions)}"
    )
    kernels = table(
        ("", "kernel", "from", "replay"),
        [
            (
                escape(k.role),
                escape(k.release or k.spec),
                escape(k.origin),
                f"<a href='{escape(REPLAY_PAGE.format(role=k.role))}'>report.html</a>",
            )
            for k in (verdict.base, verdict.patched)
        ],
    )
    rows = [
        (
            f"<b>{escape(r.behaviour)}</b><br><span class='muted'>{escape(r.summary)}</span>",
            _outcome(r.base),
            _outcome(r.patched),
            f"<span class='bad'>{escape(r.verdict.upper())}</span>"
            if r.verdict == REGRESSED
            else escape(r.verdict if r.verdict == SAME else r.verdict.upper()),
        )
        for r in verdict.rows
    ]
    body = (
        f"<h1 id='verdict'><span class='verdict {v}'>{v}</span>rig validate</h1>"
        f"<p>{escape(what)}.</p><h2>Kernels</h2>{kernels}"
        f"<h2 id='behaviours'>Behaviours</h2>"
        f"{table(('behaviour', 'base', 'patched', 'verdict'), rows)}"
        "<p><a href='validate.json'>validate.json</a> <a href='junit.xml'>junit.xml</a></p>"
    )
    return page(f"rig validate: {v}", body)


def _outcome(o: Outcome) -> str:
    status = "ok" if o.status == PASS else "bad"
    detail = f"<br>{escape(o.detail)}" if o.detail else ""
    word = o.status if o.status == PASS else o.status.upper()
    return f"<span class='{status}'>{escape(word)}</span>{detail}"


def write(out: Path, verdict: Verdict) -> Path:
    path = out / NAME
    path.write_text(render(verdict))
    return path
