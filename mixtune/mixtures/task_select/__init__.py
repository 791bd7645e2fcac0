"""Choose the training tasks for a target task: `mixtune mixture select` (SEmb, retrieval, DSIR n-grams).

(Not to be confused with `mixtures/selection.py`, which resolves the task names and globs of a mixture file.)

    pool = collection_pool("bundled")                        # candidates minus the split's held-out tasks
    targets = task_targets(pool, ["task1624_disfl_qa_question_yesno_classification"])
    selection = select_for_targets(pool, targets, "semb", k=10)
    print(mixture_yaml(selection, pool))                     # a mixture file `mixture show` accepts
"""

from mixtune.mixtures.task_select.output import mixture_yaml, to_json
from mixtune.mixtures.task_select.pool import collection_pool, file_target, mixture_pool, task_targets
from mixtune.mixtures.task_select.select import METHODS, Selection, select_for_targets

__all__ = ["METHODS", "Selection", "collection_pool", "file_target", "mixture_pool", "mixture_yaml",
           "select_for_targets", "task_targets", "to_json"]
