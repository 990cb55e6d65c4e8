"""Platform adapters behind one Provider protocol, and local emulators.

Empty until the channels issue adds ``providers.base`` and the adapters.
"""

__all__: list[str] = []
