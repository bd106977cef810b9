import pytest

from components.curate.base import step_counts
from components.curate.document import Document
from components.curate.pii import PIIRedactor, luhn_valid


@pytest.fixture
def pii():
    return PIIRedactor()


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("Write to jane.doe@example.com today.", "Write to <EMAIL> today."),
        ("Server at 8.8.8.8 answered.", "Server at <IP_ADDRESS> answered."),
        ("Call +1 (555) 123-4567 now.", "Call <PHONE_NUMBER> now."),
        ("Call 555-123-4567 or 020.7946.0958.", "Call <PHONE_NUMBER> or <PHONE_NUMBER>."),
        ("Pay with 4111 1111 1111 1111 please.", "Pay with <CARD_NUMBER> please."),
        ("Card 5500-0000-0000-0004 on file.", "Card <CARD_NUMBER> on file."),
    ],
)
def test_pii_is_replaced_by_typed_placeholders(pii, text, redacted):
    assert pii.format(text) == redacted


@pytest.mark.parametrize(
    "text",
    [
        "The router at 192.168.1.20 is private.",
        "Order 4111 1111 1111 1112 fails the Luhn check.",
        "In 1999 2000 2001 the numbers rose.",
        "On 2023-01-15 at 10.30 we met.",
        "ISBN 978-0-306-40615-7 is a book.",
    ],
)
def test_look_alikes_are_left_alone(pii, text):
    assert pii.format(text) == text


def test_luhn_accepts_real_test_numbers_only():
    assert luhn_valid("4111111111111111") and luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112") and not luhn_valid("1234")


def test_counts_documents_per_kind_of_pii(pii):
    docs = [Document("mail a@b.org or 8.8.4.4", "f", 1), Document("no pii here", "f", 2), Document("x@y.com", "f", 3)]
    list(pii.run(docs))
    assert step_counts(pii, drops=False)["modified"] == {"email": 2, "ip": 1, "all": 2}


def test_find_reports_what_is_left(pii):
    assert pii.find("mail a@b.org, card 4111111111111111") == ["card", "email"]
    assert pii.find(pii.format("mail a@b.org, card 4111111111111111")) == []
