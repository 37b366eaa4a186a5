import logging

from dynamictrl import errors
from dynamictrl.catalog import MissingModelsError
from dynamictrl.studio import Cancelled
from dynamictrl.weights import DownloadCancelled, WeightsNotFoundError


def raised(error):
    try:
        raise error
    except BaseException as caught:
        return caught


def test_user_errors_are_one_line_with_the_traceback_at_debug(caplog):
    log = logging.getLogger("test.server")
    with caplog.at_level(logging.DEBUG, logger="test.server"):
        errors.log_job_error(log, raised(WeightsNotFoundError("Weights for x are not in y.\nRun z.")), "generate")
    error_records = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in error_records] == ["generate: Weights for x are not in y. Run z."]
    assert error_records[0].exc_info is None
    assert [r.exc_info is not None for r in caplog.records if r.levelno == logging.DEBUG] == [True]


def test_cancel_is_not_an_error_and_bugs_keep_their_traceback(caplog):
    log = logging.getLogger("test.server")
    with caplog.at_level(logging.INFO, logger="test.server"):
        errors.log_job_error(log, raised(Cancelled("stopped")), "job 3")
        errors.log_job_error(log, raised(DownloadCancelled("stopped")), "download")
        errors.log_job_error(log, raised(KeyError("boom")), "job 4")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "job 3: cancelled"),
        ("INFO", "download: cancelled"),
        ("ERROR", "job 4: 'boom'"),
    ]
    assert caplog.records[-1].exc_info is not None


def test_which_errors_are_the_users():
    assert errors.is_user_error(ValueError("bad size"))
    assert errors.is_user_error(MissingModelsError([]))
    assert errors.is_user_error(Cancelled())
    assert not errors.is_user_error(RuntimeError("CUDA error: an illegal memory access"))
    assert errors.user_message(RuntimeError()) == "RuntimeError"
