// The Python module `cgh_ops._C`. It exists so that `import cgh_ops._C` loads this
// shared library, whose static TORCH_LIBRARY_IMPL registrars attach the native kernels
// to the schemas defined (once) in cgh_ops/_ops.py. It exposes no Python functions, only
// `cpu_capability`: which build of the CPU kernels this process runs ("AVX512", "AVX2" or
// "DEFAULT"; chosen from the CPU and ATEN_CPU_CAPABILITY when the module loads).
#include <Python.h>

#include "cpu/kernel_table.h"

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "Native kernels of cgh_ops (registered with the PyTorch dispatcher).",
      -1,    // no per-module state
      nullptr,
  };
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr && PyModule_AddStringConstant(module, "cpu_capability", cgh::cpu::kernel_capability()) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}
