"""What the realistic generator may vary beyond its defaults, as clinical scans do; all off.

Each kind draws from a child generator of its case's own (`numpy.random.Generator.spawn`), so
switching one on leaves the label and every other draw of the case unchanged, and a case drawn
with all of them off is the default generator's voxel for voxel. They make held-out sets that
test what the default cases do not (experiments/synthetic/README.md) and training sets for
longer fits than the demo's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class ScanVariation:
    # Each field's metadata names what it draws, for messages that refuse it elsewhere.
    # probability of each sequence being acquired in 2.5-6 mm axial slices and resampled to 1 mm
    thick_slices: float = field(default=0.0, metadata={"draws": "slices"})
    # probability of a case having faint FLAIR- and T2-bright patches of healthy tissue
    faint_patches: float = field(default=0.0, metadata={"draws": "faint patches"})
    # each sequence's contrast shrunk towards white matter by a factor drawn from U(floor, 1)
    contrast_floor: float = field(default=1.0, metadata={"draws": "contrasts"})

    def __post_init__(self) -> None:
        for name in ("thick_slices", "faint_patches"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        if not 0.0 < self.contrast_floor <= 1.0:
            raise ValueError(f"contrast_floor must be in (0, 1], got {self.contrast_floor}")

    def changed(self) -> list[str]:
        """The names of the kinds switched on, as `name=value`."""
        return [
            f"{setting.name}={getattr(self, setting.name)}"
            for setting in fields(self)
            if getattr(self, setting.name) != setting.default
        ]


NO_VARIATION = ScanVariation()
