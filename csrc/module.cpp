// The Python module `cgh_ops._C`. It exists so that `import cgh_ops._C` loads this
// shared library, whose static TORCH_LIBRARY_IMPL registrars attach the native kernels
// to the schemas defined (once) in cgh_ops/_ops.py. It exposes no Python functions.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "Native kernels of cgh_ops (registered with the PyTorch dispatcher).",
      -1,    // no per-module state
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}
