"""A realistic check: a tiny character-level language model trains the same with flashseq.LSTM
as with torch.nn.LSTM (same seed, same data, same optimiser), step for step."""
import copy

import pytest
import torch
from torch import nn

import flashseq
from tests.nn.twins import FALLBACK_WARNING

pytestmark = pytest.mark.filterwarnings(FALLBACK_WARNING)

VOCAB, EMBED, HIDDEN, SEQ, BATCH, STEPS = 20, 16, 32, 24, 8, 200


def make_text(n_chars: int, seed: int) -> torch.Tensor:
    """[n_chars] int64 tokens of a made-up language: random words from a fixed lexicon of
    character strings separated by a space token (0), so there is structure to learn."""
    g = torch.Generator().manual_seed(seed)
    lexicon = [torch.randint(1, VOCAB, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g)
               for _ in range(12)]
    pieces, total = [], 0
    while total < n_chars:
        word = lexicon[int(torch.randint(0, len(lexicon), (1,), generator=g))]
        pieces += [word, torch.zeros(1, dtype=torch.int64)]
        total += word.numel() + 1
    return torch.cat(pieces)[:n_chars]


class CharLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, EMBED)
        self.lstm = nn.LSTM(EMBED, HIDDEN, num_layers=2, batch_first=True)
        self.head = nn.Linear(HIDDEN, VOCAB)

    def forward(self, tokens):
        h, _ = self.lstm(self.embed(tokens))
        return self.head(h)


def train(model, text, seed):
    """Losses of STEPS Adam steps on random windows of ``text`` (window order from ``seed``)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(STEPS):
        starts = torch.randint(0, text.numel() - SEQ - 1, (BATCH,), generator=g)
        window = torch.stack([text[s:s + SEQ + 1] for s in starts.tolist()])
        logits = model(window[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), window[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return torch.tensor(losses, dtype=torch.float64)


def test_char_lm_trains_like_torch():
    torch.manual_seed(0)
    reference = CharLM()
    ours = flashseq.convert(copy.deepcopy(reference))
    assert type(ours.lstm) is flashseq.LSTM
    text = make_text(4000, seed=1)
    ref_losses = train(reference, text, seed=2)
    our_losses = train(ours, text, seed=2)
    assert torch.isfinite(our_losses).all()
    # it learned something: the last 20 steps are well below the first (log(20) = 3.0)
    assert ref_losses[-20:].mean() < 0.75 * ref_losses[:5].mean()
    # float32 noise grows slowly through 200 Adam steps; a wrong gradient anywhere would
    # separate the curves by far more within a few steps
    diff = (our_losses - ref_losses).abs()
    assert diff[:20].max() < 1e-5, f"early steps differ by {diff[:20].max():.2e}"
    assert diff.max() < 1e-4, f"loss curves differ by up to {diff.max():.2e} (step {diff.argmax()})"
