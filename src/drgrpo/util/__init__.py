"""Small helpers every layer may import (they import nothing else of drgrpo)."""
