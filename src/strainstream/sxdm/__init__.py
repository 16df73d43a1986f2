"""SXDM analysis core: geometry, progressive 3-D peak moments, drift registration, maps.

Typical use::

    from strainstream.sxdm import StrainMapper, map_file
    mapper = StrainMapper(metadata, (ny, nx), theta_deg=theta)
    mapper.add_frames(theta_deg, iy, ix, frames)   # any order, any batch size
    maps = mapper.maps(); stats = mapper.statistics(maps)
"""

from ._errors import SXDMError, SXDMMetadataError
from ._geometry import (
    GEOMETRY_KEYS,
    SXDMGeometry,
    pixel_q_vectors,
    q_to_d_and_tilts,
    rocking_matrix,
)
from ._io import (
    MAP_DATASETS,
    SXDMChunk,
    SXDMFileInfo,
    map_file,
    read_sxdm_file,
    read_sxdm_info,
    write_maps,
)
from ._mapper import (
    FLAG_BAD_DETECTOR_VALUES,
    FLAG_DETECTOR_TRUNCATED,
    FLAG_INCOMPLETE,
    FLAG_LOW_INTENSITY,
    FLAG_THETA_TRUNCATED,
    StrainMapper,
    SXDMMaps,
    SXDMStatistics,
    compute_statistics,
    statistics_table,
)
from ._refine import fit_gaussians_1d
from ._registration import estimate_drift, register_translation, shift_maps

__all__ = [
    "FLAG_BAD_DETECTOR_VALUES",
    "FLAG_DETECTOR_TRUNCATED",
    "FLAG_INCOMPLETE",
    "FLAG_LOW_INTENSITY",
    "FLAG_THETA_TRUNCATED",
    "GEOMETRY_KEYS",
    "MAP_DATASETS",
    "SXDMChunk",
    "SXDMError",
    "SXDMFileInfo",
    "SXDMGeometry",
    "SXDMMaps",
    "SXDMMetadataError",
    "SXDMStatistics",
    "StrainMapper",
    "compute_statistics",
    "estimate_drift",
    "fit_gaussians_1d",
    "map_file",
    "pixel_q_vectors",
    "q_to_d_and_tilts",
    "read_sxdm_file",
    "read_sxdm_info",
    "register_translation",
    "rocking_matrix",
    "shift_maps",
    "statistics_table",
    "write_maps",
]
