"""Builds cgh_ops and its native extension ``cgh_ops._C``.

* CPU kernels (``csrc/*.cpp``, ``csrc/cpu/*.cpp``) are always built.
* CUDA kernels (``csrc/cuda/*.cu``) are built when the installed torch is a CUDA build
  (``torch.version.cuda``) and a CUDA toolkit (nvcc) is found -- no GPU is needed.
  ``TORCH_CUDA_ARCH_LIST`` defaults to "8.0;9.0".
* ``CGH_OPS_CPU_ONLY=1`` skips the CUDA sources; ``CGH_OPS_NO_EXTENSION=1`` builds no
  extension at all (pure-Python install: every op runs on the reference kernels).

Install with ``pip install --no-build-isolation -e .`` so that the build uses the torch
that is installed (and the extension matches its ABI).
"""

import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _find_cuda_home():
    """The toolkit folder: $CUDA_HOME, else the one nvcc lives in, else /usr/local/cuda."""
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if candidate and os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            return candidate
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    return None


def _pip_cuda_include_dirs():
    """Headers that torch's CUDA headers include (cusparse.h, ...) but a bare toolkit may
    lack: pip's nvidia-* wheels ship them under site-packages/nvidia/cu*/include."""
    dirs = []
    for entry in sys.path:
        dirs += sorted(glob.glob(os.path.join(entry, "nvidia", "cu*", "include")))
        dirs += sorted(glob.glob(os.path.join(entry, "nvidia", "*", "include")))
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def _extensions():
    if _flag("CGH_OPS_NO_EXTENSION"):
        return [], {}
    cuda_home = None
    import torch

    if not _flag("CGH_OPS_CPU_ONLY") and torch.version.cuda is not None:
        cuda_home = _find_cuda_home()
        if cuda_home:
            # cpp_extension reads CUDA_HOME when it is imported.
            os.environ["CUDA_HOME"] = cuda_home
    from torch.utils import cpp_extension

    # -fopenmp: at::parallel_for is inline; without it the OpenMP pragmas torch's headers
    # use are ignored and every kernel runs on one thread (torch's own libgomp serves it).
    cxx_flags = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fopenmp"]
    link_flags = ["-fopenmp"]
    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    include_dirs = [os.path.join(ROOT, "csrc")]
    if cuda_home:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += rel("csrc/cuda/*.cu") + rel("csrc/cuda/*.cpp")
        nvcc_flags = ["-O3", "--fmad=false", "-lineinfo", "--expt-relaxed-constexpr", "-DCGH_WITH_CUDA"]
        if _flag("CGH_OPS_PTXAS_VERBOSE"):
            nvcc_flags.append("-Xptxas=-v")
        ext = cpp_extension.CUDAExtension(
            "cgh_ops._C",
            sources,
            include_dirs=include_dirs + _pip_cuda_include_dirs(),
            library_dirs=[os.path.join(cuda_home, "lib64")],
            extra_compile_args={"cxx": cxx_flags + ["-DCGH_WITH_CUDA"], "nvcc": nvcc_flags},
            extra_link_args=link_flags,
        )
        print(f"cgh_ops: building CPU + CUDA kernels (CUDA_HOME={cuda_home}, "
              f"archs {os.environ['TORCH_CUDA_ARCH_LIST']})")
    else:
        ext = cpp_extension.CppExtension(
            "cgh_ops._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
        print("cgh_ops: building the CPU kernels only")
    _write_build_info(cuda_home)
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=True)
    return [ext], {"build_ext": build_ext}


def _write_build_info(cuda_home):
    """Recorded for `python -m cgh_ops.info` (the .so itself cannot tell which archs it has)."""
    import json

    info = {
        "cuda": bool(cuda_home),
        "cuda_home": cuda_home,
        "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if cuda_home else None,
    }
    with open(os.path.join(ROOT, "cgh_ops", "_build_info.json"), "w") as f:
        json.dump(info, f, indent=1)


ext_modules, cmdclass = _extensions()

setup(
    name="cgh_ops",
    version="0.1.0",
    description="Fused median-of-means and coordinate-wise median kernels for Coherent Gradients",
    packages=[
        "cgh_ops",
        "cgh_ops.optim",
        "cgh_ops.train",
        "cgh_ops.experiments",
        "cgh_ops.distributed",
        # Our Triton kernels install under our namespace, never as a top-level
        # `triton_kernels` (a published package of that name exists).
        "cgh_ops.triton_kernels",
    ],
    package_dir={"cgh_ops.triton_kernels": "triton_kernels"},
    package_data={"cgh_ops": ["data/*", "_build_info.json"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        "train": ["torchvision", "scikit-learn", "tqdm", "matplotlib"],
        "test": ["pytest", "expecttest", "pytest-benchmark", "scikit-learn", "tqdm", "matplotlib"],
    },
)
