import pytest

from services.platform import pagination
from services.platform.errors import InvalidArgument


def test_page_size_defaults_and_caps():
    assert pagination.page_size(0) == pagination.DEFAULT_PAGE_SIZE
    assert pagination.page_size(7) == 7
    assert pagination.page_size(10**6) == pagination.MAX_PAGE_SIZE


def test_negative_page_size_names_the_field():
    with pytest.raises(InvalidArgument) as caught:
        pagination.page_size(-1)
    assert caught.value.reason == "INVALID_PAGE_SIZE"
    assert caught.value.violations[0].field == "page_size"


def test_token_round_trip():
    fp = pagination.query_fingerprint(region="CN")
    token = pagination.encode_page_token({"after": "c-0042"}, fp)
    assert "c-0042" not in token  # opaque: not readable as plain text
    assert pagination.decode_page_token(token, fp) == {"after": "c-0042"}
    assert pagination.decode_page_token("", fp) is None


@pytest.mark.parametrize("token", ["garbage", "e30.000000000000", "!!!.abc", "x" * 50])
def test_malformed_token_is_invalid_argument(token):
    with pytest.raises(InvalidArgument) as caught:
        pagination.decode_page_token(token, pagination.query_fingerprint())
    assert caught.value.reason == "INVALID_PAGE_TOKEN"
    assert caught.value.violations[0].field == "page_token"


def test_tampered_token_is_rejected():
    fp = pagination.query_fingerprint()
    token = pagination.encode_page_token({"after": "a"}, fp)
    checksum = token.partition(".")[2]
    forged = pagination.encode_page_token({"after": "z"}, fp).partition(".")[0] + "." + checksum
    with pytest.raises(InvalidArgument) as caught:
        pagination.decode_page_token(forged, fp)
    assert caught.value.reason == "INVALID_PAGE_TOKEN"


def test_token_from_another_query_is_rejected():
    token = pagination.encode_page_token({"after": "a"}, pagination.query_fingerprint(region="CN"))
    with pytest.raises(InvalidArgument) as caught:
        pagination.decode_page_token(token, pagination.query_fingerprint(region="PT"))
    assert caught.value.reason == "PAGE_TOKEN_QUERY_MISMATCH"
