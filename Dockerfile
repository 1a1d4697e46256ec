# syntax=docker/dockerfile:1
# litscale training image: CUDA PyTorch + litscale[gpu,eval,wandb].
#
#   docker build -t litscale .                                  # with flash-attn / mamba-ssm / causal-conv1d
#   docker build --build-arg INSTALL_GPU_EXTRAS=0 -t litscale .   # skip the compiled kernels (fallback paths)
#   docker build --build-arg INSTALL_GPU_EXTRAS=strict -t litscale .  # fail the build if a kernel package fails
#   docker run --gpus all --ipc=host -v $PWD/data:/data -v $PWD/out:/out litscale \
#       torchrun --nproc_per_node=8 pretrain.py --train_model sambay --depth 16 --train_name scaling_mup \
#       --train_data_dir /data/slimpajama --out_dir /out/sambay_d16
#
# See docs/docker.md (multi-node, permissions, pinning the base image by digest).

# The devel flavour ships nvcc and the CUDA headers that flash-attn, mamba-ssm and causal-conv1d compile
# against when no prebuilt wheel matches.  Pin by digest for bit-for-bit rebuilds:
#   --build-arg BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-devel@sha256:<digest>
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-devel
FROM ${BASE_IMAGE}

# 1 = try to install the [gpu] extra and keep going without any package that fails to build (the model
# then uses its pure PyTorch / Triton paths); strict = a failure fails the build; 0 = skip them.
ARG INSTALL_GPU_EXTRAS=1
# Parallel compile jobs for the CUDA extensions (each can use several GB of RAM).
ARG MAX_JOBS=4
# GPU architectures compiled when a kernel package builds from source: A100 (8.0), H100/H200 (9.0).
ARG TORCH_CUDA_ARCH_LIST="8.0;9.0"
ARG USER_UID=1000
ARG USER_GID=1000

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/etc/litscale-constraints.txt \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MAX_JOBS=${MAX_JOBS} \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# git: pip VCS installs and run provenance; build-essential + ninja: CUDA extension builds.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential git ninja-build \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid "${USER_GID}" litscale \
    && useradd --no-log-init --uid "${USER_UID}" --gid "${USER_GID}" --create-home --shell /bin/bash litscale \
    && mkdir -p /data /out /opt/litscale \
    && chown litscale:litscale /data /out /opt/litscale

# Keep the image's CUDA build of torch (and torchvision/torchaudio if present): without this constraint a
# dependency could make pip replace it with a different wheel from PyPI.
RUN python - <<'EOF'
import importlib.metadata as md
pins = []
for name in ("torch", "torchvision", "torchaudio", "triton"):
    try:
        pins.append(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
open("/etc/litscale-constraints.txt", "w").write("\n".join(pins) + "\n")
print("pinned:", *pins)
EOF

WORKDIR /opt/litscale

# Dependencies first (cached while only the sources change): the project metadata alone is enough for pip
# to resolve them; the package itself is installed editable below.
COPY --chown=litscale:litscale pyproject.toml README.md* ./
COPY --chown=litscale:litscale lit_gpt ./lit_gpt
RUN python -m pip install "setuptools>=68" "wheel>=0.42" "packaging>=23" "ninja>=1.11" "psutil>=5.9" "einops>=0.7" \
    && python -m pip install --editable ".[eval,wandb]"

# The compiled kernels need torch at build time, hence --no-build-isolation.  In tolerant mode each package
# of the [gpu] extra (requirement strings read from the installed project metadata) is tried on its own.
RUN if [ "${INSTALL_GPU_EXTRAS}" = "0" ]; then \
        echo "INSTALL_GPU_EXTRAS=0: skipping flash-attn, mamba-ssm, causal-conv1d, liger-kernel"; \
    elif python -m pip install --no-build-isolation --editable ".[gpu]"; then \
        echo "gpu extras installed"; \
    elif [ "${INSTALL_GPU_EXTRAS}" = "strict" ]; then \
        echo "INSTALL_GPU_EXTRAS=strict and the [gpu] extra failed to install" >&2; exit 1; \
    else \
        mkdir -p /tmp/gpu-extra \
        && python -c "import importlib.metadata as m, re; [open(f'/tmp/gpu-extra/{i:02d}.txt', 'w').write(r.split(';')[0] + '\\n') for i, r in enumerate(x for x in m.requires('litscale') if re.search(r'extra\\s*==\\s*.gpu.', x))]" \
        && for req in /tmp/gpu-extra/*.txt; do \
            python -m pip install --no-build-isolation --requirement "${req}" \
                || cat "${req}" >> /opt/litscale/GPU_EXTRAS_MISSING; \
        done \
        && rm -rf /tmp/gpu-extra; \
        if [ -f /opt/litscale/GPU_EXTRAS_MISSING ]; then \
            echo "WARNING: these gpu extras are not installed (fallback code paths will be used):" >&2; \
            cat /opt/litscale/GPU_EXTRAS_MISSING >&2; \
        fi; \
    fi

# The rest of the sources (.dockerignore keeps data, outputs and caches out of the context).
COPY --chown=litscale:litscale . .

USER ${USER_UID}:${USER_GID}
ENV HF_HOME=/home/litscale/.cache/huggingface \
    WANDB_DIR=/out

CMD ["python", "pretrain.py", "--help"]
