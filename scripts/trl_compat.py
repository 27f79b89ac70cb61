"""Lets TRL 0.28 run under transformers 5 (imported by the fixture scripts before `import trl`).

TRL 0.28 predates transformers 5's _is_package_available returning (available, version): every optional package
then looks installed (weave first). Only the boolean form is patched, and only inside TRL; newer TRL is untouched.
"""
import trl.import_utils as _tiu

if not isinstance(_tiu._is_package_available("torch"), bool):
    _orig = _tiu._is_package_available

    def _available(name, return_version=False):
        found = _orig(name, return_version=True)
        return found if return_version else bool(found[0])

    _tiu._is_package_available = _available
