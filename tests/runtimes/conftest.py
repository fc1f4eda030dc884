"""Session fixtures of the runtime tests (defined in runtime_cases.py)."""

from runtime_cases import classifier_case, detector_case, segmenter_case  # noqa: F401
