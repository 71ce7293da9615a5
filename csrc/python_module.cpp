// Makes the operator library importable as the Python module mixshare_ops._C;
// importing it runs the TORCH_LIBRARY registrations. No Python functions are
// bound: everything is reached through torch.ops.mixshare_ops.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
