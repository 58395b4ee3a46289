"""Log directories for the TensorBoard screenshots: the demo's early/middle/late runs, a user MLP, a task switch.

    python docs/screenshots/make_logs.py /tmp/logs demo,mlp,switch
    tensorboard --logdir /tmp/logs/demo --port 6064
    chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1000,560 \
        --virtual-time-budget=30000 --screenshot=deficit.png \
        'http://localhost:6064/#scalars&_smoothingWeight=0.6&tagFilter=deficit'

(The Scalars and Custom Scalars dashboards draw SVG; the Time Series dashboard needs WebGL,
which headless Chromium without a GPU does not give it.)
"""
import sys, os, shutil
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger
import lightning_critical as lc
from lightning_critical.experiments.pathways import early_middle_late
from lightning_critical.data import MatrixCompletionDataModule
from lightning_critical.models import DeepMatrixFactorization

root = sys.argv[1]
parts = sys.argv[2].split(",")
quiet = dict(enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)

# 1. the flagship demo's three runs (narrower, for speed)
if "demo" in parts:
    early_middle_late(save_dir=os.path.join(root, "demo"), accelerator="cpu", width=24, every_n_steps=10)

# 2. a user's plain MLP
class MLP(pl.LightningModule):
    def __init__(self, width=32):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(10, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))
    def forward(self, x):
        return self.net(x)
    def training_step(self, batch, i):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

if "mlp" in parts:
  g = torch.Generator().manual_seed(0)
  x = torch.randn(256, 10, generator=g); y = x[:, :3].sum(1, keepdim=True)
  loader = DataLoader(TensorDataset(x, y), batch_size=32)
  pl.seed_everything(0)
  trainer = pl.Trainer(max_epochs=40, logger=TensorBoardLogger(os.path.join(root, "mlp"), name="mlp", version=""),
                       callbacks=[lc.PathwayDeficit("net.2", (10, 20), mode="silence"), lc.SpectralMonitor(every_n_steps=8)],
                       log_every_n_steps=8, **quiet)
  trainer.fit(MLP(), loader)

# 3. a task switch
if "switch" in parts:
    dm = MatrixCompletionDataModule(size=20, n_observed=150)
    trainer = pl.Trainer(max_epochs=300, logger=TensorBoardLogger(os.path.join(root, "switch"), name="switch", version=""),
                         callbacks=[lc.TaskSwitch({150: "target"}), lc.SpectralMonitor(every_n_steps=10)],
                         log_every_n_steps=10, **quiet)
    trainer.fit(DeepMatrixFactorization(size=20, depth=3), datamodule=dm)
print("ok")
