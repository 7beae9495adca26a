"""`lipsync learning-check`: does a generator family learn, on a few clips, on this machine, in an hour?

Each clip is cut at 80 % of its frames: the heads are prepared as one training dataset, the recipe's stages
train on them (each time-boxed), and the result dubs the held-out tails with their own audio. The dubs are
scored against the real tails beside three controls (the same model fed shuffled audio, a mouth copied
from another frame, and the real tail itself). A recipe is a family's list of training stages plus which
stage's output dubs, which one judges sync (if any) and its rows (`recipes.py`: the landmark-prior recipe
adds a renderer driven by the real landmarks, and a landmark table, `landmarks.py`); the rest does not
depend on the family.

Corpus recipes (`corpus_config.py`, `corpus_split.py`, `corpus_run.py`) train instead on a controlled-sync
corpus (`lipsync data synth`): held-out clips and one held-out person, scored against the corpus's known
mouth opening, with pass lines.
"""

from lipsync.train.learning_check.config import LearningCheckConfig, load_learning_check_config
from lipsync.train.learning_check.run import LearningCheckResult, run_learning_check

__all__ = [
    "LearningCheckConfig",
    "LearningCheckResult",
    "load_learning_check_config",
    "run_learning_check",
]
