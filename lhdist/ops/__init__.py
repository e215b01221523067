"""Single-device Lighthouse attention: pyramid, selection, gather, scatter, and the op."""

from lhdist.ops.lighthouse import lighthouse_attention
from lhdist.ops.selection import lighthouse_select
from lhdist.ops.spec import LighthouseSpec

__all__ = ["LighthouseSpec", "lighthouse_attention", "lighthouse_select"]
