"""A hostile CPython 3.12 for tests/tests/hostile_target.rs: it writes garbage into the code
object of the function it burns CPU in, and points its own interpreter frame's `previous` at
itself, so its frame chain is a cycle. Neither is touched by the running code, so it runs on;
a profiler that reads them must stay bounded. Offsets: /work/shared/PYTHON_LAYOUTS.md (3.12).
"""
import ctypes
import sys
import time

assert sys.version_info[:2] == (3, 12), sys.version

CO_FILENAME, CO_NAME, CO_QUALNAME, CO_LINETABLE = 0x70, 0x78, 0x80, 0x88
FRAME_F_FRAME = 0x18  # PyFrameObject.f_frame
IFRAME_PREVIOUS = 0x08  # _PyInterpreterFrame.previous


def poke(addr, value):
    ctypes.c_uint64.from_address(addr).value = value


def burn_garbage():
    end = time.monotonic() + 0.3
    x = 7
    while time.monotonic() < end:
        for _ in range(10000):
            x = (x * 31 + 7) & 0xFFFFFFFF
    return x


# A fake "bytes" object whose ob_size claims a terabyte, and a fake "str" with garbage state.
fake = ctypes.create_string_buffer(256)
poke(ctypes.addressof(fake) + 0x10, 1 << 40)
poke(ctypes.addressof(fake) + 0x20, 0xFFFFFFFFFFFFFFFF)
code = id(burn_garbage.__code__)
poke(code + CO_QUALNAME, 0x4141414141414141)  # unmapped
poke(code + CO_NAME, 0x10)  # the zero page
poke(code + CO_FILENAME, ctypes.addressof(fake))  # not a compact str
poke(code + CO_LINETABLE, ctypes.addressof(fake))  # 1 TiB line table


def spin_forever():
    frame = sys._getframe()
    iframe = ctypes.c_uint64.from_address(id(frame) + FRAME_F_FRAME).value
    poke(iframe + IFRAME_PREVIOUS, iframe)  # this frame's caller is itself; it never returns
    print("ready", flush=True)
    while True:
        burn_garbage()
        time.sleep(0.2)


spin_forever()
