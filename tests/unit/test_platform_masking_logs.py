import json
import logging

from opentelemetry.sdk.trace import TracerProvider

from services.platform.logs import JsonFormatter
from services.platform.masking import RedactingFilter, customer_token, mask_email, mask_phone, redact


def test_customer_token_is_stable_and_hides_the_id():
    token = customer_token("demo-0001")
    assert token == customer_token("demo-0001")
    assert token != customer_token("demo-0002")
    assert "demo" not in token and "0001" not in token


def test_masks():
    assert mask_email("li.wei@example.cn") == "l***@example.cn"
    assert mask_phone("+8613800138000") == "***00"
    assert redact("mail li.wei@example.cn or call +86 138 0013 8000") == "mail [email] or call [phone]"
    assert redact("sms to 13800138000 sent") == "sms to [phone] sent"
    # Addresses, ports, dates and ordinary numbers stay readable.
    for text in ("listening on 127.0.0.1:50051", "2026-11-25 12:00", "took 1234 ms", "demo-0001"):
        assert redact(text) == text


def test_json_log_line_carries_trace_and_span_ids_and_no_pii():
    tracer = TracerProvider().get_tracer("t")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "contact %s", ("li.wei@example.cn",), None)
    RedactingFilter().filter(record)
    with tracer.start_as_current_span("op") as span:
        line = JsonFormatter("profile").format(record)
        ctx = span.get_span_context()
    payload = json.loads(line)
    assert payload["trace_id"] == format(ctx.trace_id, "032x")
    assert payload["span_id"] == format(ctx.span_id, "016x")
    assert payload["service"] == "profile"
    assert payload["message"] == "contact [email]"
    assert "li.wei" not in line


def test_json_log_line_without_span_has_no_trace_id():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "plain", None, None)
    payload = json.loads(JsonFormatter("risk").format(record))
    assert "trace_id" not in payload and payload["level"] == "INFO"
