"""skillcoach: where is this learner weak, and what should they practise next?"""

__version__ = "0.1.0"
