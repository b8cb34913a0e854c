from .anderson import Anderson as Anderson
from .broyden import Broyden as Broyden
from .splitting import (
    ForwardBackward as ForwardBackward,
    PeacemanRachford as PeacemanRachford,
)
