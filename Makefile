# The two commands of the README: `make demo` (the main job) and `make test` (the suite, as CI runs it).
JOBS ?= $(shell nproc)
BUILD ?= build
CMAKE_FLAGS ?=

.PHONY: all setup build test test-release test-asan test-fuzz demo bench python clean format

all: build

setup:
	@scripts/setup.sh

build: setup
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS) >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

# Warnings as errors, the whole suite; then again under AddressSanitizer + UndefinedBehaviorSanitizer;
# then the fuzz targets (where clang is installed), each over its seed corpus and 30 s of fuzzing.
test: test-release test-asan test-fuzz

test-release: setup
	cmake -S . -B build-test -DCMAKE_BUILD_TYPE=Release -DMAMBA_WERROR=ON $(CMAKE_FLAGS) >/dev/null
	cmake --build build-test -j $(JOBS)
	cd build-test && ctest --output-on-failure -j $(JOBS)

test-asan: setup
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMAMBA_WERROR=ON -DMAMBA_SANITIZE=ON -DMAMBA_CUDA=OFF $(CMAKE_FLAGS) >/dev/null
	cmake --build build-asan -j $(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -j $(JOBS)

# The libFuzzer targets of tests/fuzz need clang; without it they are skipped with a message.
test-fuzz: setup
	@if command -v clang++ >/dev/null 2>&1; then \
	  cmake -S . -B build-fuzz -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMAMBA_FUZZ=ON \
	    -DMAMBA_TESTS=OFF -DMAMBA_CUDA=OFF $(CMAKE_FLAGS) >/dev/null && \
	  cmake --build build-fuzz -j $(JOBS) --target fuzz && \
	  cd build-fuzz && ctest --output-on-failure -j $(JOBS) -L fuzz; \
	else \
	  echo "test-fuzz: clang++ not found: the fuzz targets are skipped"; \
	fi

# The Python package, installed into .venv (made with Debian's Python, so that it sees Debian's NumPy and
# PyTorch): then `.venv/bin/python`, or `. .venv/bin/activate` and `python`.
PYTHON ?= /usr/bin/python3
python: setup
	test -x .venv/bin/python || $(PYTHON) -m venv --system-site-packages .venv
	CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) .venv/bin/pip install --no-build-isolation --no-deps .

demo: build
	scripts/demo.sh $(BUILD)/mambacpp

bench: build
	$(BUILD)/mambacpp init --preset 130m --out cache/models/random-130m --seed 1
	$(BUILD)/mambacpp bench cache/models/random-130m

clean:
	rm -rf build build-test build-asan build-fuzz .venv

format:
	clang-format -i $$(git ls-files '*.cpp' '*.h' '*.cu' '*.cuh')
