"""Protocol-faithful local emulators of the chat platforms, for tests and benchmarks."""

from .base import Emulator, FaultError, open_emulator, serve_emulator

__all__ = ["Emulator", "FaultError", "open_emulator", "serve_emulator"]
