"""pLSTM (source, transition and mark gates on the edges of a DAG): 1D, 2D-grid and DAG ops.

``functional.py`` holds the entry points and their layouts, ``reference.py`` the direct DAG
propagation (the ground truth), ``parallel.py`` the chunk/tile forms, ``graphs.py`` the line and
grid as DAGs, ``gates.py`` the P-mode and D-mode parametrisations and ``plan.py`` the tile sizes.
The Triton kernels (imported only when asked for): ``triton_1d.py`` (1D forward and backward),
``triton_1d_tree.py`` (1D forward, chunks merged by a log-depth scan), ``triton_2d.py`` and
``triton_2d_bwd.py`` (2D forward and backward).
"""
from .functional import plstm_1d, plstm_2d, plstm_dag
from .gates import d_mode_2d, p_mode_2d
from .graphs import grid_dag, grid_gates_to_dag, line_dag, line_gates_to_dag
from .plan import plan_plstm_1d, plan_plstm_2d

__all__ = ["plstm_1d", "plstm_2d", "plstm_dag", "line_dag", "grid_dag", "line_gates_to_dag",
           "grid_gates_to_dag", "plan_plstm_1d", "plan_plstm_2d", "p_mode_2d", "d_mode_2d"]
