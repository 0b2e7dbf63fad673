"""Image folders: ``ROOT/<class>/<file>`` (files may sit in sub-folders of a class folder).

Class order, in this precedence:

1. ``classes=FILE``: the file lists class folder names (or WNIDs) in label order; a folder missing
   from the list is an error, a listed class without a folder is an empty class.
2. ``classes=imagenet``: folders are ImageNet WNIDs or ImageNet-1k indices (ImageNet-V2's ``0``..``999``);
   labels follow the ImageNet index order.
3. otherwise: folders that are all ImageNet WNIDs are in ImageNet order (ImageNet-R/A's 200 folders get
   the matching `class_subset`); folders that are all integers sort numerically; others sort as strings.

Files are images by extension (`formats.IMAGE_EXTENSIONS`); hidden files and folders are skipped; rows
are in label order, then by relative path. Keys and locators are the relative path (``cls/img1.jpg``).
Symlinked class folders and files are followed (symlink farms are a common way to build subsets);
symlinked folders inside a class folder are not descended into.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from embedstore.errors import DatasetError
from embedstore.sources import imagenet
from embedstore.sources.base import Dataset, Sample
from embedstore.sources.classes import ClassSpace, class_space, imagenet_class_space, read_list_file
from embedstore.sources.files import FileStorage, existing_root
from embedstore.sources.formats import has_image_extension
from embedstore.sources.templates import default_templates

OPTIONS = {"classes"}


def open_imagefolder(name: str, spec: str, path: str, options: Mapping[str, Any]) -> Dataset:
    """Register an image folder; every check happens here, before any image is read."""
    root = existing_root(path)
    folders = _class_folders(root)
    space = _folder_class_space(folders, options.get("classes"), root)
    index = space.index_of()
    files_by_label: list[list[str]] = [[] for _ in space.ids]
    for folder in folders:
        files_by_label[index[folder]] = _image_files(root, folder)
    samples = []
    for label, files in enumerate(files_by_label):
        for relative in files:
            samples.append(Sample(row=len(samples), key=relative, label=label, locator=relative))
    if not samples:
        raise DatasetError(f"image folder {root!r} has no image files in its class folders")
    return Dataset(
        name=name,
        kind="imagefolder",
        spec=spec,
        root=root,
        samples=tuple(samples),
        classnames=space.classnames,
        templates=default_templates(space.imagenet_like),
        task="classification",
        class_subset=space.class_subset,
        storage=FileStorage(root),
    )


def _class_folders(root: str) -> list[str]:
    try:
        with os.scandir(root) as entries:
            folders = [entry.name for entry in entries if entry.is_dir() and not entry.name.startswith(".")]
    except OSError as exc:
        raise DatasetError(f"image folder {root!r} cannot be listed ({exc.strerror or exc})") from None
    if not folders:
        raise DatasetError(f"image folder {root!r} has no class folders (expected ROOT/<class>/<image>)")
    return folders


def _folder_class_space(folders: list[str], classes: Any, root: str) -> ClassSpace:
    if classes is None:
        return _default_class_space(folders)
    if str(classes) == "imagenet":
        return _imagenet_folder_space(folders, root)
    entries = read_list_file(classes, "classes")
    listed = set(entries)
    if len(listed) != len(entries):
        raise DatasetError(f"classes file {os.fspath(classes)!r} lists a class twice")
    for folder in sorted(folders):
        if folder not in listed:
            raise DatasetError(
                f"image folder {root!r}: folder {folder!r} is not listed in classes file {os.fspath(classes)!r}"
            )
    return class_space(entries)


def _default_class_space(folders: list[str]) -> ClassSpace:
    if imagenet.all_imagenet_wnids(folders):
        index = imagenet.imagenet_wnid_index()
        ordered = sorted(folders, key=index.__getitem__)
        return imagenet_class_space([index[wnid] for wnid in ordered], ids=ordered)
    if all(folder.isdigit() for folder in folders):
        ordered = sorted(folders, key=lambda folder: (int(folder), folder))
    else:
        ordered = sorted(folders)
    return class_space(ordered)


def _imagenet_folder_space(folders: list[str], root: str) -> ClassSpace:
    wnid_index = imagenet.imagenet_wnid_index()
    indexed: list[tuple[int, str]] = []
    for folder in folders:
        if folder in wnid_index:
            indexed.append((wnid_index[folder], folder))
        elif folder.isdigit() and int(folder) < imagenet.NUM_IMAGENET_CLASSES:
            indexed.append((int(folder), folder))
        else:
            raise DatasetError(
                f"image folder {root!r}: folder {folder!r} is neither an ImageNet WNID nor an index 0..999 (classes=imagenet)"
            )
    indexed.sort()
    indices = [index for index, _ in indexed]
    if len(set(indices)) != len(indices):
        raise DatasetError(f"image folder {root!r}: two folders name the same ImageNet class (classes=imagenet)")
    return imagenet_class_space(indices, ids=[folder for _, folder in indexed])


def _image_files(root: str, folder: str) -> list[str]:
    """Relative paths (``/``-separated) of the image files under ROOT/folder, sorted. A folder that
    cannot be listed is an error (never silently an empty class)."""

    def refuse(error: OSError) -> None:
        raise DatasetError(
            f"image folder {root!r}: folder {error.filename!r} cannot be listed ({error.strerror or error})"
        )

    found = []
    for directory, subdirectories, filenames in os.walk(os.path.join(root, folder), onerror=refuse):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        for filename in filenames:
            if filename.startswith(".") or not has_image_extension(filename):
                continue
            full = os.path.join(directory, filename)
            if os.path.isfile(full):
                found.append(os.path.relpath(full, root).replace(os.sep, "/"))
    return sorted(found)
