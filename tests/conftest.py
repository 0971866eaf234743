import pytest
import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

transformers.logging.set_verbosity_error()
# Tiny models run fastest on one thread, and a shared CPU does not slow them by contention.
torch.set_num_threads(1)


def make_gpt2(seed: int = 0, **kw) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = dict(n_layer=4, n_embd=64, n_head=4, vocab_size=1000, n_positions=64, bos_token_id=0, eos_token_id=0)
    cfg.update(kw)
    return GPT2LMHeadModel(GPT2Config(**cfg)).eval()


@pytest.fixture(scope="session")
def gpt2():
    return make_gpt2()


@pytest.fixture
def ids():
    g = torch.Generator().manual_seed(1)
    base = torch.randint(0, 1000, (3, 10), generator=g)
    src = torch.randint(0, 1000, (3, 10), generator=g)
    return base, src
