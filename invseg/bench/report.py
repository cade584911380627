"""Write benchmark sections into ``docs/benchmarks.md`` (others untouched); target verdicts."""

from __future__ import annotations

from pathlib import Path

from invseg.files import atomic_write_text

HEADER = (
    "# Benchmarks\n\n"
    "Written by `invseg bench`; every table in a section comes from one process, "
    "so rows are directly comparable. Re-run `invseg bench all` to refresh.\n"
)


def update_section(path: Path, name: str, markdown: str) -> None:
    """Replace (or append) the section ``name`` of a benchmarks page.

    A section is delimited by ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` so the
    engine, nets and recon benchmarks can each refresh their own part of one page.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "b.md"
        >>> update_section(p, "engine", "## Engine\\n")
        >>> update_section(p, "engine", "## Engine v2\\n")
        >>> p.read_text().count("Engine")
        1
    """
    path = Path(path)
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{markdown.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else HEADER
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail.lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    atomic_write_text(path, text)


def verdict(ok: bool) -> str:
    """``"met"`` or a bold ``"missed"`` for a targets table."""
    return "met" if ok else "**missed**"


def verdicts(values: dict[str, float], limit: float) -> str:
    """One verdict over several rows (at most ``limit`` each), naming the rows above it.

    Example:
        >>> verdicts({"A": 1.2, "B": 1.4}, 1.3)
        '**missed** for B; met for A'
    """
    missed = [name for name, v in values.items() if v > limit]
    if not missed:
        return verdict(True)
    met = [name for name in values if name not in missed]
    return f"**missed** for {', '.join(missed)}; met for {', '.join(met) or 'none'}"
