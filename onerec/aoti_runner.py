"""AOTInductor programs called without holding Python's GIL.

torch's loader (``torch._inductor.package.load_package``) calls a compiled program through a
pybind11 binding that keeps the GIL for the whole call, so two server threads never run
programs side by side and the HTTP event loop stalls meanwhile (``python -m
benchmarks.gil_check``). The compiled ``.so`` itself exposes a small C interface
(``AOTInductorModelContainerCreateWithDevice`` / ``...Run`` / ``...Delete``, the calls torch's
own C++ runner makes); :class:`GilFreeProgram` makes those calls through :mod:`ctypes`, which
releases the GIL for the length of each foreign call. Tensors cross the boundary as torch's
``AtenTensorHandle`` s, made and taken back with torch's own helpers
(``torch._C._aoti.unsafe_alloc_void_ptrs_from_tensors`` /
``alloc_tensors_by_stealing_from_void_ptrs``), exactly as the C++ runner does.

Only programs that need nothing outside their ``.so`` qualify: constants compiled into the
library (AOTInductor's default) and no custom-op calls through torch's proxy executor.
:func:`load_gil_free` returns ``None`` for any other package, and the caller falls back to
torch's loader.
"""

from __future__ import annotations

import ctypes
import shutil
import tempfile
import weakref
import zipfile
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

_VOID_P = ctypes.c_void_p
_SUCCESS = 0


def _capsule_api() -> tuple[ctypes._CFuncPtr, ctypes._CFuncPtr]:  # type: ignore[name-defined]
    """``PyCapsule_GetPointer`` and ``PyCapsule_New``, typed (torch's helpers speak capsules)."""
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype = _VOID_P
    get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    new = ctypes.pythonapi.PyCapsule_New
    new.restype = ctypes.py_object
    new.argtypes = [_VOID_P, ctypes.c_char_p, _VOID_P]
    return get, new


class GilFreeProgram:
    """One AOTInductor program of a ``.pt2`` package, callable from many threads at once.

    Args:
        library: the program's extracted ``.so``.
        num_runners: calls that may run at once (model instances in the container); a
            call beyond them waits for one to finish.
        name: for messages.

    Calling it with tensors ``(a, b, ...)`` (contiguous, the dtypes the program was exported
    with) returns the program's outputs as a tuple.
    """

    def __init__(self, library: Path, num_runners: int = 1, name: str = "program") -> None:
        self.name = name
        self._lib = ctypes.CDLL(str(library))
        lib = self._lib
        lib.AOTInductorModelContainerCreateWithDevice.argtypes = [
            ctypes.POINTER(_VOID_P), ctypes.c_size_t, ctypes.c_char_p, ctypes.c_char_p,
        ]
        lib.AOTInductorModelContainerGetNumOutputs.argtypes = [_VOID_P, ctypes.POINTER(ctypes.c_size_t)]
        lib.AOTInductorModelContainerRun.argtypes = [
            _VOID_P, ctypes.POINTER(_VOID_P), ctypes.c_size_t, ctypes.POINTER(_VOID_P), ctypes.c_size_t, _VOID_P, _VOID_P,
        ]
        lib.AOTInductorModelContainerDelete.argtypes = [_VOID_P]
        for fn in (lib.AOTInductorModelContainerCreateWithDevice, lib.AOTInductorModelContainerGetNumOutputs,
                   lib.AOTInductorModelContainerRun, lib.AOTInductorModelContainerDelete):
            fn.restype = ctypes.c_int32
        handle = _VOID_P()
        if lib.AOTInductorModelContainerCreateWithDevice(ctypes.byref(handle), max(1, num_runners), b"cpu", None) != _SUCCESS:
            raise RuntimeError(f"AOTInductor {name}: could not create the model container from {library}")
        self._handle = handle
        outputs = ctypes.c_size_t()
        if lib.AOTInductorModelContainerGetNumOutputs(handle, ctypes.byref(outputs)) != _SUCCESS:
            raise RuntimeError(f"AOTInductor {name}: could not read the number of outputs")
        self.num_outputs = int(outputs.value)
        self._get_pointer, self._new_capsule = _capsule_api()
        self._finalizer = weakref.finalize(self, lib.AOTInductorModelContainerDelete, handle)

    def __call__(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        # New handles for the inputs: the program takes ownership of them (and frees them).
        capsules = torch._C._aoti.unsafe_alloc_void_ptrs_from_tensors(list(inputs))
        input_handles = (_VOID_P * len(capsules))(*[self._get_pointer(c, None) for c in capsules])
        output_handles = (_VOID_P * self.num_outputs)()
        status = self._lib.AOTInductorModelContainerRun(  # the GIL is released for this call
            self._handle, input_handles, len(capsules), output_handles, self.num_outputs, None, None
        )
        if status != _SUCCESS:
            raise RuntimeError(f"AOTInductor {self.name} failed (its error is on stderr)")
        outputs = [self._new_capsule(output_handles[i], None, None) for i in range(self.num_outputs)]
        return tuple(torch._C._aoti.alloc_tensors_by_stealing_from_void_ptrs(outputs))


def load_gil_free(package: Path, model_name: str, num_runners: int = 1) -> Optional[GilFreeProgram]:
    """The program ``model_name`` of the AOTInductor package ``package``, or ``None`` when it
    needs more than its ``.so`` (a constants file or a proxy-executor node file).

    The library is extracted to a private temporary folder, removed when the program is
    garbage-collected or the process ends.
    """
    prefix = f"data/aotinductor/{model_name}/"
    with zipfile.ZipFile(package) as archive:
        members = [n for n in archive.namelist() if prefix in n and not n.endswith("/")]
        libraries = [n for n in members if n.endswith(".so")]
        extras = [n for n in members if not n.endswith((".so", ".cpp", "_metadata.json"))]
        if len(libraries) != 1 or extras:
            return None
        folder = Path(tempfile.mkdtemp(prefix="onerec-aoti-"))  # a fresh folder per program
        library = Path(archive.extract(libraries[0], folder))
    program = GilFreeProgram(library, num_runners, name=model_name)
    weakref.finalize(program, shutil.rmtree, folder, True)
    return program
