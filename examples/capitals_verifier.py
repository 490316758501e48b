"""A user-written verifier for examples/capitals.jsonl: `--verifier capitals_verifier:names_the_city`.

Small models answer in a sentence ("The capital of Peru is Lima."), so the check is lenient: the final
answer must name the reference city as a word.
"""

import re

from caopd.tasks.custom import final_answer


def names_the_city(response: str, answer: str) -> bool:
    return re.search(rf"\b{re.escape(answer)}\b", final_answer(response), re.IGNORECASE) is not None
