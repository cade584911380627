"""The registry of on-disk layouts: one :class:`~invseg.data.layouts.Layout` object per name."""

from __future__ import annotations

from collections.abc import Iterator

from invseg._choices import check_option
from invseg.data.layouts.base import FileMatch, Layout
from invseg.data.layouts.brats import BRATS2020, BRATS2021, BRATS2023
from invseg.data.layouts.decathlon import MSD, NNUNET
from invseg.data.layouts.iseg import ISEG

__all__ = ["LAYOUTS", "get_layout", "match_file", "register_layout"]

#: The known layouts by name, in detection order (dataset.json layouts first).
LAYOUTS: dict[str, Layout] = {}


def register_layout(layout: Layout) -> Layout:
    """Add ``layout`` to :data:`LAYOUTS` (detected after the built-in ones); returns it.

    Raises:
        ValueError: a layout of that name is already registered.
    """
    if layout.name in LAYOUTS:
        raise ValueError(f"layout {layout.name!r} is already registered")
    LAYOUTS[layout.name] = layout
    return layout


for _layout in (MSD, NNUNET, BRATS2020, BRATS2021, BRATS2023, ISEG):
    register_layout(_layout)


def get_layout(name: str | Layout) -> Layout:
    """The registered layout ``name`` (a :class:`Layout` is passed through).

    Raises:
        ValueError: unknown name (with a did-you-mean hint).

    Example:
        >>> get_layout("brats2023").convention, get_layout("iseg").modalities
        ('brats2023', ('T1', 'T2'))
    """
    if isinstance(name, Layout):
        return name
    return LAYOUTS[check_option("layout", name, LAYOUTS)]


def iter_layouts() -> Iterator[Layout]:
    """The registered layouts in detection order."""
    yield from LAYOUTS.values()


def match_file(stem: str, layout: str | None = None) -> FileMatch | None:
    """The first layout that reads ``stem`` (a file name without extension) as one of its files.

    A forced ``layout`` reads the names of a sibling edition too (BraTS 2020 <-> 2021).

    Example:
        >>> match_file("BraTS2021_00000_flair")
        FileMatch(case_id='BraTS2021_00000', key='flair', layout='brats2021')
        >>> match_file("BraTS2021_00000_flair", layout="brats2020").layout
        'brats2020'
        >>> match_file("BraTS2021_00000_flair", layout="brats2023") is None
        True
    """
    for candidate in iter_layouts():
        if layout is not None and candidate.name != layout:
            continue
        hit = candidate.match_file(stem, strict=layout is None)
        if hit is not None:
            return hit
    return None
