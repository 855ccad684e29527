"""The run file: its schema (`RunSpec`, each section owned by its component) and its reader and writer."""

from autocomp.config.loader import VERSION, dump_run_spec, load_run_spec, parse_run_spec
from autocomp.config.run import DataSpec, ModelSpec, RunSpec

__all__ = ["VERSION", "DataSpec", "ModelSpec", "RunSpec", "dump_run_spec", "load_run_spec", "parse_run_spec"]
