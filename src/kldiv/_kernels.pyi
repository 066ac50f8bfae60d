def kl_rows(
    s: int,
    t: int,
    g: int,
    kl: int,
    ce: int | None,
    valid: int | None,
    labels: int | None,
    rows: int,
    vocab: int,
    s_stride: int,
    t_stride: int,
    g_stride: int,
    inv_t: float,
    w_f: float,
    weight: float,
    ce_coef: float,
    /,
) -> None: ...
def exp_f32(x: int, out: int, n: int, /) -> None: ...
def exp_f64(x: int, out: int, n: int, /) -> None: ...
def simd_path() -> str: ...
def simd_paths() -> tuple[str, ...]: ...
def set_simd_path(name: str, /) -> None: ...
