"""The Azure listing parser: one List Blobs page of XML → entries, as ``walk_blobs`` gave them."""

from __future__ import annotations

from warpdrive.backends.azure import _parse_listing
from warpdrive.backends.base import Entry

PAGE = b"""<?xml version="1.0" encoding="utf-8"?>
<EnumerationResults ServiceEndpoint="http://127.0.0.1/devstoreaccount1" ContainerName="c">
  <Prefix>train/</Prefix><MaxResults>2</MaxResults><Delimiter>/</Delimiter>
  <Blobs>
    <Blob><Name>train/a.jpg</Name><Properties>
      <Last-Modified>Sat, 28 Nov 2026 13:00:00 GMT</Last-Modified>
      <Etag>"0x8DD1"</Etag><Content-Length>110</Content-Length></Properties></Blob>
    <BlobPrefix><Name>train/sub/</Name></BlobPrefix>
    <Blob><Name Encoded="true">train/b%01.jpg</Name><Properties>
      <Last-Modified>Sat, 28 Nov 2026 13:00:01 GMT</Last-Modified>
      <Etag>0x8DD2</Etag><Content-Length>0</Content-Length></Properties></Blob>
  </Blobs>
  <NextMarker>2!token</NextMarker>
</EnumerationResults>"""


def test_a_page_gives_directories_first_then_objects_and_the_token() -> None:
    entries, token = _parse_listing(PAGE, "train/")
    assert entries == [
        Entry(name="sub", is_dir=True),
        Entry("a.jpg", False, 110, 1795870800.0, "0x8DD1"),
        Entry("b\x01.jpg", False, 0, 1795870801.0, "0x8DD2"),
    ]
    assert token == "2!token"


def test_the_last_page_has_no_token() -> None:
    last = PAGE.replace(b"<NextMarker>2!token</NextMarker>", b"<NextMarker />")
    assert _parse_listing(last, "train/")[1] is None
    empty = b"<EnumerationResults><Blobs /><NextMarker /></EnumerationResults>"
    assert _parse_listing(empty, "") == ([], None)
