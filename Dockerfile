# Training image: CUDA PyTorch plus this package. The default command trains with the config in
# the mounted /config folder; mount your recordings and a folder for the run as well:
#   docker build -t nitrogen-finetuner .
#   docker run --init --gpus all --shm-size 8g --user "$(id -u):$(id -g)" -v $PWD/config:/config \
#       -v $PWD/recordings:/data -v $PWD/runs:/runs nitrogen-finetuner
# Any image with Python >= 3.10, pip and PyTorch >= 2.6 works as the base; pip keeps its torch.
ARG BASE_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir ".[video]"

VOLUME ["/config", "/data", "/runs"]
ENTRYPOINT ["nitrogen-finetune"]
CMD ["train", "/config/train.yaml"]
