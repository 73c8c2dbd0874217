# cellfcn on CPU: real BVLC Caffe built by the project's own recipe (make deps, make env, make caffe).
#   docker build -t cellfcn .                                                         # Debian 13 (trixie)
#   docker build --build-arg DEBIAN_RELEASE=bookworm -t cellfcn .                     # Debian 12
#   docker run --rm -v "$PWD/runs:/opt/cellfcn/runs" cellfcn                          # the whole pipeline
#   docker run --rm -v "$PWD/runs:/opt/cellfcn/runs" cellfcn make reproduce QUICK=1   # few-minute smoke run
# `make docker-check` builds this file with buildah on trixie and bookworm and runs the tests inside each image.
ARG DEBIAN_RELEASE=trixie
FROM debian:${DEBIAN_RELEASE}

WORKDIR /opt/cellfcn

# Layers run from rarely to often edited, so that editing Python code does not rebuild Caffe.
# System packages: tools/deps.sh is what `make deps` runs; called directly because make is one of them.
COPY tools/deps.sh tools/apt-packages.txt tools/
RUN tools/deps.sh && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb

# The venv with the pinned Python packages; pycaffe is built against its numpy.
COPY requirements.txt ./
COPY tools/make_env.sh tools/
RUN PIP_NO_CACHE_DIR=1 tools/make_env.sh python3 /opt/cellfcn/.venv --requirements-only

# Caffe + pycaffe into .caffe/, with the arguments `make caffe` passes (so its stamp matches later); the build
# tree and the compiler cache stay out of the image.
COPY tools/build_caffe.sh tools/build_errors.sh tools/caffe-src.sources tools/caffe-src-archive.sources tools/
COPY patches/ patches/
RUN CCACHE_DISABLE=1 tools/build_caffe.sh --prefix /opt/cellfcn/.caffe --python /opt/cellfcn/.venv/bin/python \
    && rm -rf .caffe-build

# The rest of the repository (.dockerignore leaves out runs/, builds, the venv and .git/), installed into the
# venv in editable mode: editing Python code rebuilds only these layers.
COPY . .
RUN PIP_NO_CACHE_DIR=1 make env

# Outputs go to runs/: mount a host folder there to keep them.
CMD ["make", "reproduce"]
