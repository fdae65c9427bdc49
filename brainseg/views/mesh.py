"""The 3D view: surfaces of the predicted tumor, the ground truth and a translucent head (or brain) from marching
cubes (scikit-image), written as one binary glTF (``.glb``, trimesh) for ``gr.Model3D``.

Surfaces are built from presented (Z, R, C) masks in millimetres and placed in glTF's Y-up frame: x towards the
patient's left, y superior, z anterior (right-handed), centred on the head. Marching cubes at level 0.5 on a
binary mask encloses the voxels' volume to within ~0.1 % for tumors of a few thousand voxels (about 2 % for a
few hundred), so the mesh's volume can be checked against the mask's.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from skimage.measure import marching_cubes

from brainseg.fileio import atomic_write_bytes

MESH_NAMES = ("prediction", "truth", "head")
# RGBA: the prediction red and the ground truth blue as on the planes; the head a translucent gray
COLOURS = {"prediction": (230, 40, 40, 255), "truth": (30, 144, 255, 110), "head": (200, 200, 200, 45)}
HEAD_STEP = 2  # marching-cubes step for the head: its surface only gives context


@dataclass(frozen=True)
class Frame:
    """Presented voxel (z, r, c) -> glTF millimetres, centred on ``centre`` (a presented voxel position)."""

    spacing: tuple[float, float, float]
    centre: tuple[float, float, float]

    def to_world(self, zrc: np.ndarray) -> np.ndarray:
        """(N, 3) presented voxel coordinates -> (N, 3) glTF x (left), y (superior), z (anterior) in mm."""
        mm = (np.asarray(zrc, float) - self.centre) * self.spacing
        return np.stack([mm[:, 2], mm[:, 0], -mm[:, 1]], axis=1)


def surface(mask: np.ndarray, frame: Frame, step: int = 1) -> trimesh.Trimesh | None:
    """The closed surface around a presented bool mask (None when empty), outward normals, in ``frame``."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return None
    lo = np.maximum(np.argwhere(mask).min(axis=0) - 1, 0)
    hi = np.argwhere(mask).max(axis=0) + 2
    crop = np.pad(mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], 1).astype(np.float32)
    if min(crop.shape) < 2 * step + 1:
        step = 1
    vertices, faces, _, _ = marching_cubes(crop, 0.5, step_size=step, allow_degenerate=False)
    vertices += lo - 1  # back to the volume's voxel positions (the pad added one)
    mesh = trimesh.Trimesh(frame.to_world(vertices), faces, process=True)
    if mesh.volume < 0:  # the frame's axis swap flips orientation: make the normals point outwards
        mesh.invert()
    return mesh


def mesh_volume_ml(mesh: trimesh.Trimesh | None) -> float:
    """A closed mesh's enclosed volume in mL (0 for None)."""
    return 0.0 if mesh is None else abs(float(mesh.volume)) / 1000.0


def _coloured(mesh: trimesh.Trimesh, name: str) -> trimesh.Trimesh:
    colour = np.asarray(COLOURS[name], float) / 255
    mesh.visual = trimesh.visual.TextureVisuals(material=trimesh.visual.material.PBRMaterial(
        name=name, baseColorFactor=colour, metallicFactor=0.0, roughnessFactor=0.8, doubleSided=name == "head",
        alphaMode="BLEND" if colour[3] < 1 else "OPAQUE"))
    return mesh


def build_scene(prediction: np.ndarray, spacing: Sequence[float], truth: np.ndarray | None = None,
                head: np.ndarray | None = None) -> trimesh.Scene:
    """A scene of named meshes (:data:`MESH_NAMES`; the empty ones left out) from presented bool masks."""
    spacing = tuple(float(s) for s in spacing)
    reference = head if head is not None and head.any() else prediction
    centre = np.argwhere(reference).mean(axis=0) if reference.any() else (np.asarray(prediction.shape) - 1) / 2
    frame = Frame(spacing, tuple(float(v) for v in centre))
    scene = trimesh.Scene()
    parts = {"head": (head, HEAD_STEP), "truth": (truth, 1), "prediction": (prediction, 1)}
    for name in ("head", "truth", "prediction"):  # the head first: translucent layers behind the tumor
        mask, step = parts[name]
        mesh = None if mask is None else surface(mask, frame, step)
        if mesh is not None:
            scene.add_geometry(_coloured(mesh, name), node_name=name, geom_name=name)
    return scene


def save_glb(scene: trimesh.Scene, path: str | Path) -> Path:
    """Write ``scene`` as binary glTF, atomically."""
    return atomic_write_bytes(path, scene.export(file_type="glb"))


def load_meshes(path: str | Path) -> dict[str, trimesh.Trimesh]:
    """The named meshes of a ``.glb`` written by :func:`save_glb` (for checks and tests)."""
    scene = trimesh.load(str(path), file_type="glb", force="scene")
    return {name: geometry for name, geometry in scene.geometry.items()}
