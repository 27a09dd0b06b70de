"""A bound on what one browser session can park in the server's memory through the upload endpoint.

Streamlit keeps every file PUT to ``/_stcore/upload_file/<session>/<file id>`` in memory until the
session ends, whether or not a widget asked for it: a session could park hundreds of megabytes
under new file ids. The app's pages never need more than a few files at once (one image, or a
weights file and its card), so each session keeps only its newest MAX_FILES_PER_SESSION files;
older ones are dropped as new ones arrive.
"""

from __future__ import annotations

import threading

from streamlit import runtime
from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
from streamlit.runtime.uploaded_file_manager import UploadedFileRec

MAX_FILES_PER_SESSION = 4  # an image upload, or weights + card, with room for one replacement each

_installed_lock = threading.Lock()


def keep_newest_uploads(manager: MemoryUploadedFileManager, limit: int = MAX_FILES_PER_SESSION) -> None:
    """Make ``manager`` keep at most ``limit`` files per session (the newest); idempotent."""
    with _installed_lock:
        if getattr(manager, "_cnn_explorer_limit", None) is not None:
            return
        original = manager.add_file

        def add_file(session_id: str, file: UploadedFileRec) -> None:
            original(session_id, file)
            with manager._lock:
                stored = list(manager.file_storage.get(session_id, {}))
            for old_id in stored[:-limit] if len(stored) > limit else []:
                manager.remove_file(session_id, old_id)  # oldest first: dicts keep insertion order

        manager.add_file = add_file  # type: ignore[method-assign]
        manager._cnn_explorer_limit = limit  # type: ignore[attr-defined]


def install_upload_limit() -> None:
    """Apply :func:`keep_newest_uploads` to the running server's upload store (nothing outside a server)."""
    if not runtime.exists():
        return
    manager = runtime.get_instance().uploaded_file_mgr
    if isinstance(manager, MemoryUploadedFileManager):
        keep_newest_uploads(manager)
