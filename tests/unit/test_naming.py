"""The one task-name rule: the same verdict from the core, the registry, the server and the trainer's push."""

import pytest
import typer

from prompt_store.base import InvalidTaskName as StoreInvalidTaskName
from prompt_store.base import check_task_name as store_check
from promptserve import naming

GOOD = ["a", "0", "dtd10", "cifar10.v2", "my_task-1", "x" * 64]
BAD = ["", "A", "-a", ".a", "_a", "a/b", "../x", "a b", "x\n", "x" * 65, "é", 3, None]


@pytest.mark.parametrize("name", GOOD)
def test_good_names_pass_everywhere(name):
    assert naming.is_task_name(name)
    assert naming.check_task_name(name) == name == store_check(name)


@pytest.mark.parametrize("name", BAD)
def test_bad_names_fail_everywhere_with_the_rule_in_the_message(name):
    assert not naming.is_task_name(name)
    with pytest.raises(naming.InvalidTaskName, match="starting with a letter or digit"):
        naming.check_task_name(name)
    with pytest.raises(StoreInvalidTaskName):  # the store's own error is also the core's
        store_check(name)
    with pytest.raises(typer.BadParameter, match="invalid task name"):
        naming.check_task_name(name, error=typer.BadParameter)


def test_server_answers_a_bad_name_with_the_rule():
    from server.errors import ApiError
    from server.tasks import check_task_name as server_check

    with pytest.raises(ApiError) as refused:
        server_check("x\n")  # `^...$` with match() let this through before
    assert refused.value.status_code == 422 and naming.TASK_NAME_RULE in refused.value.detail
