import pytest

from sites.public_keys import normalize_origin


@pytest.mark.parametrize(("raw", "origin"), [
    ("https://Blog.Example/", "https://blog.example"),
    ("https://blog.example:443", "https://blog.example"),
    ("http://localhost:8080", "http://localhost:8080"),
    ("http://a.localhost:80", "http://a.localhost"),
])
def test_origins_are_written_as_browsers_send_them(raw: str, origin: str) -> None:
    assert normalize_origin(raw) == origin


@pytest.mark.parametrize("raw", ["blog.example", "https://blog.example/page", "ftp://x.example",
                                 "https://user@x.example", "", "null", "https://x.example?q"])
def test_anything_else_is_refused_with_the_shape_to_use(raw: str) -> None:
    with pytest.raises(ValueError, match="scheme://host"):
        normalize_origin(raw)
