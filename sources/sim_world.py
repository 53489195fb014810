"""The static world of the source simulator: calendar, identifiers, names and master data.

Everything here is a pure function of ``(seed, scale, start)``, so the simulator never stores
master data of its own: it rebuilds the same world whenever it continues a simulation.

Times are plain integers inside the simulator: timestamps are seconds since 1970-01-01 (naive
UTC) and dates are days since 1970-01-01; they become ``datetime``/``date`` values only when
rows are written.
"""

from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass

import numpy as np

DAY_S = 86_400
HOUR_S = 3_600
MASTER_HOUR = 6  # master data rows carry 06:00 on the start morning
EVENT_HOURS = (8, 18)  # business events happen between 08:00 and 18:00
WRITE_END_HOUR = 20  # every row of a day is written before 20:00

# --------------------------------------------------------------------------------------------
# calendar


def day_num(day: dt.date) -> int:
    """Days since 1970-01-01."""
    return (day - dt.date(1970, 1, 1)).days


def to_date(n: int) -> dt.date:
    return dt.date(1970, 1, 1) + dt.timedelta(days=int(n))


def bday_add(days: np.ndarray | int, offsets: np.ndarray | int) -> np.ndarray:
    """Business days (Mon-Fri) ``offsets`` after ``days`` (``days`` rolled forward first)."""
    d = np.asarray(days, dtype=np.int64).astype("datetime64[D]")
    return np.busday_offset(d, offsets, roll="forward").astype(np.int64)


def bday_roll(days: np.ndarray | int) -> np.ndarray:
    """The first business day on or after each day."""
    return bday_add(days, 0)


def is_bday(day: int) -> bool:
    return bool(np.is_busday(np.int64(day).astype("datetime64[D]")))


def year_of(day: int) -> int:
    return to_date(day).year


# --------------------------------------------------------------------------------------------
# random streams


def stream(seed: int, day_index: int, name: str) -> np.random.Generator:
    """An independent generator per (seed, business-day index, purpose).

    Separate streams keep one purpose's draws from shifting another's: the rows of a day do not
    change when only the fault rates or the schema-drift rate change.
    """
    return np.random.default_rng(np.random.SeedSequence([seed, day_index, zlib.crc32(name.encode())]))


def event_times(rng: np.random.Generator, day: int, n: int, lo_h: float = EVENT_HOURS[0],
                hi_h: float = EVENT_HOURS[1]) -> np.ndarray:
    """``n`` whole-second timestamps on ``day`` between ``lo_h`` and ``hi_h`` o'clock."""
    return day * DAY_S + rng.integers(int(lo_h * HOUR_S), int(hi_h * HOUR_S), n, dtype=np.int64)


def write_times(rng: np.random.Generator, day: int, after: np.ndarray) -> np.ndarray:
    """``updated_at`` of rows written on ``day``: shortly after their event, within the day."""
    lo = day * DAY_S + EVENT_HOURS[0] * HOUR_S
    hi = day * DAY_S + WRITE_END_HOUR * HOUR_S - 1
    base = np.clip(after, lo, hi - 3_600)
    return np.minimum(base + rng.integers(30, 3_600, len(after), dtype=np.int64), hi)


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def logit(p: float) -> float:
    return float(np.log(p / (1.0 - p)))


# --------------------------------------------------------------------------------------------
# identifiers

# (prefix, digits) of every sequential key; orphan foreign keys use a leading 9 in the number,
# a range the counters never reach (checked at init).
ID_FORMATS: dict[str, tuple[str, int]] = {
    "supplier": ("S", 5),
    "link": ("LK", 6),
    "part": ("P", 6),
    "model": ("M", 3),
    "bom": ("BL", 7),
    "sub_bom": ("SB", 7),
    "dealer": ("D", 6),
    "order": ("ORD", 10),
    "event": ("EVT", 10),
    "receipt": ("GR", 10),
    "payable": ("PAY", 10),
    "memo": ("CM", 10),
    "supplier_repayment": ("SRP", 10),
    "sale": ("SAL", 10),
    "audit": ("AUD", 10),
    "application": ("APP", 10),
    "loan_repayment": ("LRP", 10),
}


def ids(kind: str, numbers: np.ndarray | range) -> np.ndarray:
    prefix, width = ID_FORMATS[kind]
    return np.array([f"{prefix}{int(n):0{width}d}" for n in numbers], dtype=object)


def id_limit(kind: str) -> int:
    """Counters of ``kind`` must stay below this so that orphan ids never exist."""
    return 9 * 10 ** (ID_FORMATS[kind][1] - 1)


def orphan_ids(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    prefix, width = ID_FORMATS[kind]
    low = id_limit(kind)
    nums = rng.integers(low, 10 ** width, n)
    return np.array([f"{prefix}{int(x):0{width}d}" for x in nums], dtype=object)


_VIN_ALPHABET = np.frombuffer(b"0123456789ABCDEFGHJKLMNPRSTUVWXYZ", dtype=np.uint8)  # no I, O, Q
_VIN_VALUES = np.zeros(128, dtype=np.int64)
for _ch, _v in zip(b"0123456789", range(10)):
    _VIN_VALUES[_ch] = _v
for _chars, _start in ((b"ABCDEFGH", 1), (b"JKLMN", 1), (b"P", 7), (b"R", 9), (b"STUVWXYZ", 2)):
    for _i, _ch in enumerate(_chars):
        _VIN_VALUES[_ch] = _start + _i
_VIN_WEIGHTS = np.array([8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2], dtype=np.int64)
_YEAR_CODES = "ABCDEFGHJKLMNPRSTVWXY"  # 2010..2030; 2001..2009 are 1..9

OEM_WMI = "LCL"  # the core enterprise's manufacturer code
ORPHAN_WMI = "LZZ"  # never used by a real vehicle here


def _year_code(year: int) -> int:
    if 2001 <= year <= 2009:
        return ord(str(year - 2000))
    return ord(_YEAR_CODES[(year - 2010) % len(_YEAR_CODES)])


DEALER_SERIAL_MOD = 33 * 33 * 10 ** 5  # positions 11-12 in the VIN alphabet, 13-17 digits
OEM_SERIAL_MOD = 10 ** 7  # positions 11-17 digits


def _tail_digits(out: np.ndarray, values: np.ndarray, first: int, last: int) -> None:
    v = values.copy()
    for pos in range(last, first - 1, -1):
        out[:, pos] = ord("0") + v % 10
        v //= 10


def vins(wmi: np.ndarray, vds: np.ndarray, years: np.ndarray, serials: np.ndarray, *, oem: bool) -> np.ndarray:
    """17-character VINs with a valid ISO 3779 check digit (position 9).

    ``wmi`` (3 chars) and ``vds`` (5 chars) are per-vehicle strings and ``serials`` distinct
    counters. The OEM numbers its vehicles in sequence (positions 11-17); a used car's serial is
    the counter scrambled by a bijection, so distinct counters always give distinct VINs.
    """
    n = len(serials)
    if n == 0:
        return np.array([], dtype=object)
    s = np.asarray(serials, dtype=np.int64)
    limit = OEM_SERIAL_MOD if oem else DEALER_SERIAL_MOD
    if (s < 0).any() or (s >= limit).any():
        raise ValueError(f"VIN serial out of range [0, {limit})")
    out = np.empty((n, 17), dtype=np.uint8)
    out[:, 0:3] = np.frombuffer("".join(wmi).encode(), dtype=np.uint8).reshape(n, 3)
    out[:, 3:8] = np.frombuffer("".join(vds).encode(), dtype=np.uint8).reshape(n, 5)
    uniq, inv = np.unique(np.asarray(years, dtype=np.int64), return_inverse=True)
    out[:, 9] = np.array([_year_code(int(y)) for y in uniq], dtype=np.uint8)[inv]
    if oem:
        _tail_digits(out, s, 10, 16)
    else:
        x = (s * 7_368_787 + 1_234_567) % DEALER_SERIAL_MOD
        hi = x // 10 ** 5
        out[:, 10] = _VIN_ALPHABET[hi // 33]
        out[:, 11] = _VIN_ALPHABET[hi % 33]
        _tail_digits(out, x % 10 ** 5, 12, 16)
    out[:, 8] = ord("0")
    total = (_VIN_VALUES[out] * _VIN_WEIGHTS).sum(axis=1) % 11
    out[:, 8] = np.where(total == 10, ord("X"), ord("0") + total).astype(np.uint8)
    return np.array(out.view("S17").ravel().astype(str), dtype=object)


def orphan_vins(rng: np.random.Generator, n: int) -> np.ndarray:
    wmi = np.array([ORPHAN_WMI] * n, dtype=object)
    vds = np.array(["".join(chr(c) for c in rng.choice(_VIN_ALPHABET, 5)) for _ in range(n)], dtype=object)
    return vins(wmi, vds, np.full(n, 2020), rng.integers(0, DEALER_SERIAL_MOD, n), oem=False)


# --------------------------------------------------------------------------------------------
# names

_SYLLABLES = (
    "an bai bao bei bin bo chang chao chen cheng chuan da dan de ding dong du duan fang fei feng fu "
    "gan gang gao ge guang gui hai han hang hao he heng hong hua huai huan hui ji jia jian jiang jiao "
    "jin jing jiu kai kang lai lan lang le li lian liang lin ling liu long lu luo man mao mei meng "
    "ming mu nan ning pan peng ping pu qi qian qiao qing qiu quan rong rui sha shan shang shao shen "
    "sheng shi shou shu shun song su tai tan tang tao tian ting tong wan wang wei wen wu xi xia xian "
    "xiang xiao xin xing xiu xu xuan ya yan yang yao ye yi yin ying yong you yu yuan yue yun ze zhang "
    "zhao zhen zheng zhi zhong zhou zhu zi zong"
).split()
_SURNAMES = ("Wang Li Zhang Liu Chen Yang Huang Zhao Wu Zhou Xu Sun Ma Zhu Hu Guo He Lin Gao Luo "
             "Zheng Liang Xie Song Tang Han Feng Deng Cao Peng Zeng Xiao Tian Dong Pan Yuan Cai Jiang").split()
_TIER1_CITIES = ("Beijing", "Shanghai", "Guangzhou", "Shenzhen")
_TIER2_CITIES = (
    "Chengdu Chongqing Hangzhou Wuhan Xi'an Suzhou Tianjin Nanjing Changsha Zhengzhou Dongguan "
    "Qingdao Shenyang Ningbo Kunming Wuxi Foshan Hefei Dalian Fuzhou Xiamen Harbin Jinan Wenzhou "
    "Nanning Changchun Quanzhou Shijiazhuang Guiyang Nanchang Jinhua Changzhou Nantong Jiaxing "
    "Taiyuan Xuzhou Huizhou Zhuhai Zhongshan Taizhou Yantai Lanzhou Shaoxing Haikou Urumqi"
).split()
N_TIER3_CITIES = 200
CITY_TIER_WEIGHT = {1: 25.0, 2: 6.0, 3: 1.5, 4: 0.6}  # dealers per city, relative


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def cities(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (≥ 60) city names and their tiers 1..4: the same list for every simulation."""
    rng = np.random.default_rng(20_240_601)
    real = list(_TIER1_CITIES) + list(_TIER2_CITIES)
    names, seen = list(real), {c.lower() for c in real}
    while len(names) < n:
        a, b = rng.choice(len(_SYLLABLES), 2)
        name = _cap(_SYLLABLES[a] + _SYLLABLES[b])
        if name.lower() not in seen:
            seen.add(name.lower())
            names.append(name)
    tiers = np.array([1] * len(_TIER1_CITIES) + [2] * len(_TIER2_CITIES)
                     + [3] * N_TIER3_CITIES + [4] * max(0, n - len(real) - N_TIER3_CITIES))[:n]
    return np.array(names[:n], dtype=object), tiers


def _brands(rng: np.random.Generator, n: int) -> list[str]:
    a = rng.choice(len(_SYLLABLES), n)
    b = rng.choice(len(_SYLLABLES), n)
    return [_cap(_SYLLABLES[i] + _SYLLABLES[j]) for i, j in zip(a, b)]


def person_names(rng: np.random.Generator, n: int) -> np.ndarray:
    sur = rng.choice(_SURNAMES, n)
    one = rng.random(n) < 0.35
    g1 = rng.choice(_SYLLABLES, n)
    g2 = rng.choice(_SYLLABLES, n)
    return np.array([f"{s} {_cap(a) if o else _cap(a + b)}" for s, a, b, o in zip(sur, g1, g2, one)], dtype=object)


def phones(rng: np.random.Generator, n: int) -> np.ndarray:
    second = rng.choice(list("35789"), n)
    rest = rng.integers(0, 10 ** 9, n)
    return np.array([f"1{s}{int(r):09d}" for s, r in zip(second, rest)], dtype=object)


_USCC_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_WEIGHTS = np.array([1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28])


def uscc(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unified social credit codes (18 characters, valid check character)."""
    body = np.empty((n, 17), dtype=np.int64)
    body[:, 0], body[:, 1] = 9, 1  # enterprise, company
    body[:, 2:8] = rng.integers(0, 10, (n, 6))
    body[:, 2] = rng.integers(1, 7, n)
    body[:, 8:17] = rng.integers(0, len(_USCC_CHARS), (n, 9))
    check = (31 - (body * _USCC_WEIGHTS).sum(axis=1) % 31) % 31
    return np.array(["".join(_USCC_CHARS[v] for v in row) + _USCC_CHARS[c] for row, c in zip(body, check)],
                    dtype=object)


_ID_WEIGHTS = np.array([7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2])


def resident_ids(rng: np.random.Generator, n: int, birth_days: np.ndarray) -> np.ndarray:
    """18-character resident ID numbers (region, birth date, sequence, ISO 7064 check)."""
    region = rng.integers(110_000, 660_000, n)
    seq = rng.integers(0, 1000, n)
    births = [to_date(d).strftime("%Y%m%d") for d in birth_days]
    out = []
    for r, b, s in zip(region, births, seq):
        body = f"{int(r):06d}{b}{int(s):03d}"
        total = int((np.frombuffer(body.encode(), dtype=np.uint8) - 48) @ _ID_WEIGHTS)
        out.append(body + "10X98765432"[total % 11])
    return np.array(out, dtype=object)


# --------------------------------------------------------------------------------------------
# the used-car catalogue: (make and model, new price in CNY, WMI, popularity)

CATALOGUE: tuple[tuple[str, int, str, float], ...] = (
    ("Volkswagen Lavida", 120_000, "LSV", 9), ("Volkswagen Sagitar", 150_000, "LFV", 7),
    ("Volkswagen Passat", 220_000, "LSV", 4), ("Volkswagen Tiguan L", 250_000, "LSV", 4),
    ("Toyota Corolla", 130_000, "LFM", 7), ("Toyota Camry", 200_000, "LVG", 5),
    ("Toyota RAV4", 200_000, "LFM", 4), ("Honda Civic", 130_000, "LVH", 6),
    ("Honda Accord", 200_000, "LHG", 5), ("Honda CR-V", 200_000, "LVH", 5),
    ("Nissan Sylphy", 120_000, "LGB", 8), ("Nissan X-Trail", 200_000, "LGB", 3),
    ("Buick Excelle", 100_000, "LSG", 6), ("Buick GL8", 280_000, "LSG", 3),
    ("Chevrolet Cruze", 100_000, "LSG", 3), ("BYD Qin", 110_000, "LGX", 6),
    ("BYD Han", 250_000, "LGX", 3), ("BYD Song", 160_000, "LGX", 4),
    ("Geely Emgrand", 80_000, "L6T", 6), ("Geely Boyue", 120_000, "L6T", 3),
    ("Haval H6", 120_000, "LGW", 7), ("Changan CS75", 110_000, "LS5", 4),
    ("Chery Tiggo 8", 120_000, "LVV", 3), ("Wuling Hongguang", 50_000, "LZW", 5),
    ("Trumpchi GS4", 110_000, "LMG", 2), ("Roewe i5", 80_000, "LSJ", 2),
    ("Mazda 3", 130_000, "LVR", 2), ("Kia K3", 110_000, "LJD", 2),
    ("Hyundai Elantra", 110_000, "LBE", 3), ("Ford Focus", 110_000, "LVS", 2),
    ("BMW 3 Series", 350_000, "LBV", 3), ("BMW X3", 420_000, "LBV", 2),
    ("Mercedes-Benz C-Class", 380_000, "LE4", 3), ("Mercedes-Benz GLC", 450_000, "LE4", 2),
    ("Audi A4L", 330_000, "LFV", 3), ("Audi Q5L", 420_000, "LFV", 2),
    ("Lexus ES", 330_000, "JTH", 1), ("Tesla Model 3", 260_000, "LRW", 2),
    ("Li Auto L7", 330_000, "LW4", 1), ("Volvo XC60", 400_000, "LVY", 1),
)
CATALOGUE_NAMES = np.array([c[0] for c in CATALOGUE], dtype=object)
CATALOGUE_PRICE_FEN = np.array([c[1] * 100 for c in CATALOGUE], dtype=np.int64)
CATALOGUE_WMI = np.array([c[2] for c in CATALOGUE], dtype=object)
CATALOGUE_P = np.array([c[3] for c in CATALOGUE], dtype=np.float64) / sum(c[3] for c in CATALOGUE)
CATALOGUE_VDS = np.array(["".join(chr(c) for c in np.random.default_rng(i).choice(_VIN_ALPHABET, 5))
                          for i in range(len(CATALOGUE))], dtype=object)

_PART_ITEMS = {
    "powertrain": "Engine Mount|Alternator|Starter Motor|Fuel Pump|Radiator|Turbocharger|Gearbox Housing|"
                  "Oil Pump|Water Pump|Exhaust Manifold|Intake Manifold|Clutch Kit",
    "chassis": "Brake Caliper|Brake Disc|Shock Absorber|Control Arm|Wheel Hub|Steering Gear|"
               "Coil Spring|Stabiliser Bar|Drive Shaft|Subframe",
    "body": "Bumper|Door Panel|Bonnet|Fender|Tailgate|Roof Panel|Windscreen|Side Mirror|Door Handle|Pillar",
    "electrical": "Wiring Harness|ECU|Headlamp|Tail Lamp|Battery Pack|Infotainment Unit|Sensor Cluster|"
                  "Camera Module|Relay Box|Charging Port",
    "interior": "Seat Frame|Seat Cover|Dashboard|Airbag Module|Steering Wheel|Carpet|Headliner|"
                "Console|Seat Belt|Climate Panel",
}
_COMPONENTS = ("Bracket|Bolt Set|Gasket|PCB|Housing|Spring|Bearing|Connector|Seal|Sensor|Casting|"
               "Stamping|Foam Pad|Fabric|Cable|Clip|Valve|Magnet|Resin Part|Fastener").split("|")
_SEGMENTS = ("sedan", "suv", "mpv", "ev_sedan", "ev_suv")
_PLANTS = ("Wuhan-1", "Wuhan-2", "Changchun", "Foshan")
_T1_WORDS = ("Auto Parts", "Automotive Systems", "Auto Electronics", "Precision Industry", "Powertrain",
             "Seating Systems", "Lighting", "Chassis Systems")
_T2_WORDS = ("Metal Products", "Rubber", "Plastics", "Fasteners", "Wire & Cable", "Castings", "Coatings",
             "Stamping", "Electronic Components")
_DEALER_WORDS = ("Used Cars", "Auto Trading", "Motors", "Car Market", "Pre-owned Vehicles")


# --------------------------------------------------------------------------------------------
# latent risk: parameters of the process shared by both borrower kinds

AR_PHI = 0.98  # daily persistence of the idiosyncratic component
AR_SIGMA = 0.06  # its daily shock; stationary sd = 0.06 / sqrt(1 - 0.98**2) ≈ 0.30
MACRO_PHI = 0.99
MACRO_SIGMA = 0.03  # stationary sd ≈ 0.21
AR_SD = AR_SIGMA / float(np.sqrt(1 - AR_PHI ** 2))
DEALER_TARGET_PD = 0.05  # mean 90-day PD of a standard loan, volume weighted
SUPPLIER_TARGET_PD = 0.035  # mean 12-month PD
SUPPLIER_PD_HORIZON_BDAYS = 250


def _calibrate(x: np.ndarray, weight: np.ndarray, target: float, extra_sd: float) -> float:
    """The intercept ``mu`` with weighted mean of E[sigmoid(mu + x + N(0, extra_sd))] = target."""
    nodes, w = np.polynomial.hermite_e.hermegauss(15)
    w = w / w.sum()
    lo, hi = -12.0, 4.0
    for _ in range(60):
        mid = (lo + hi) / 2
        p = (sigmoid(mid + x[:, None] + extra_sd * nodes[None, :]) @ w)
        if np.average(p, weights=weight) > target:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def _std(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    return (x - x.mean()) / (sd if sd > 0 else 1.0)


# --------------------------------------------------------------------------------------------
# the world


@dataclass
class World:
    """Master data and the static part of every borrower's risk."""

    start_day: int
    # suppliers (tier-1 first, then tier-2)
    supplier_ids: np.ndarray
    supplier_tier: np.ndarray
    supplier_a: np.ndarray  # persistent log-odds (12-month PD scale)
    supplier_b: np.ndarray  # loading on the macro factor
    supplier_terms: np.ndarray  # payment terms, calendar days
    supplier_mu: float
    # parts, models, BOM
    part_ids: np.ndarray
    part_supplier: np.ndarray  # supplier index (tier-1)
    part_price: np.ndarray  # fen
    model_ids: np.ndarray
    model_p: np.ndarray  # share of orders
    model_vds: np.ndarray
    model_plant: np.ndarray
    usage: np.ndarray  # (models, parts) quantity per vehicle
    sub_parent: np.ndarray  # part index
    sub_supplier: np.ndarray  # supplier index (tier-2)
    sub_share: np.ndarray  # share of the parent part's price
    # dealers
    dealer_ids: np.ndarray
    dealer_a: np.ndarray  # persistent log-odds (90-day PD scale)
    dealer_b: np.ndarray
    dealer_rate: np.ndarray  # cars acquired per business day
    dealer_blocked0: np.ndarray  # blocked before the simulation starts
    dealer_mu: float
    # per-borrower habits unrelated to risk, one column per behaviour (see sim_days): each
    # behaviour sees the risk through this noise, so the risk is learnable but never exactly
    dealer_style: np.ndarray  # (dealers, DEALER_STYLES)
    supplier_style: np.ndarray  # (suppliers, SUPPLIER_STYLES)
    # master tables as column dicts (contract column order, without updated_at)
    master: dict[str, dict[str, np.ndarray]]

    @property
    def n_dealers(self) -> int:
        return len(self.dealer_ids)

    @property
    def n_suppliers(self) -> int:
        return len(self.supplier_ids)


FINANCED_SHARE = 0.85  # share of acquired cars that get an order-loan application
DEALER_STYLES = ("age", "mileage", "appraisal", "days_to_sale", "sale_price", "loan_terms", "audits",
                 "repayment")
SUPPLIER_STYLES = ("short_delivery", "disputes", "memos", "late_payment")
STYLE_SD = 1.0


def build_world(seed: int, scale, start: dt.date) -> World:  # scale: simulator.Scale
    rng = stream(seed, 0, "world")
    start_day = day_num(start)
    city_names, city_tiers = cities(scale.cities)

    # ---- suppliers
    n1, n2 = scale.tier1_suppliers, scale.tier2_suppliers
    ns = n1 + n2
    tier = np.array([1] * n1 + [2] * n2)
    s_ids = ids("supplier", range(1, ns + 1))
    s_size = rng.lognormal(0.0, 0.9, ns)
    s_tenure = np.clip(rng.exponential(2_200, ns), 120, 9_000).astype(np.int64)
    s_city = rng.choice(len(city_names), ns)
    s_x = (-0.30 * _std(np.log(s_tenure)) + 0.25 * (tier == 2) - 0.20 * _std(np.log(s_size))
           + rng.normal(0.0, 0.8, ns))
    s_mu = _calibrate(s_x, np.ones(ns), scale.supplier_target_pd, float(np.hypot(AR_SD, 0.21)))
    s_a = s_mu + s_x
    s_b = rng.uniform(0.5, 1.5, ns)
    s_terms = rng.choice(np.array([30, 45, 60, 60, 60, 90]), ns)
    brands = _brands(rng, ns)
    words = np.where(tier == 1, rng.choice(_T1_WORDS, ns), rng.choice(_T2_WORDS, ns))
    suppliers = {
        "supplier_id": s_ids,
        "supplier_name": np.array([f"{city_names[c]} {b} {w} Co., Ltd." for c, b, w in zip(s_city, brands, words)],
                                  dtype=object),
        "registration_no": uscc(rng, ns),
        "contact_phone": phones(rng, ns),
        "tier": tier.astype(np.int64),
        "city": city_names[s_city],
        "onboarded_on": (start_day - s_tenure).astype(np.int64),
    }

    # ---- tier-2 → tier-1 links: every tier-1 gets at least one tier-2 when there are enough
    link_t2, link_t1 = [], []
    for j in range(n2):
        k = int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15]))
        customers = set(rng.choice(n1, min(k, n1), replace=False).tolist())
        if j < n1:
            customers.add(j)  # round-robin cover of the tier-1 suppliers
        for c in sorted(customers):
            link_t2.append(n1 + j)
            link_t1.append(c)
    link_t2 = np.array(link_t2, dtype=np.int64)
    link_t1 = np.array(link_t1, dtype=np.int64)
    nl = len(link_t2)
    links = {
        "link_id": ids("link", range(1, nl + 1)),
        "supplier_id": s_ids[link_t2] if nl else np.array([], dtype=object),
        "customer_supplier_id": s_ids[link_t1] if nl else np.array([], dtype=object),
        "since_on": (start_day - rng.integers(30, 2_500, nl)).astype(np.int64),
    }

    # ---- parts: a shared pool; each model's BOM draws its lines from it
    lines, nm = scale.bom_lines_per_model, scale.vehicle_models
    n_parts = max(lines, int(round(lines * nm * scale.parts_sharing)), n1)
    popularity = rng.lognormal(0.0, 1.0, n_parts)
    part_supplier = np.empty(n_parts, dtype=np.int64)
    part_supplier[:n1] = rng.permutation(n1)  # every tier-1 supplies something
    part_supplier[n1:] = rng.choice(n1, n_parts - n1, p=s_size[:n1] / s_size[:n1].sum())
    qty_choices = np.array([1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 4, 4, 3, 6, 8])
    mean_qty = qty_choices.mean()
    median_price = 12_000_000 / (lines * mean_qty * np.exp(1.1 ** 2 / 2))  # ≈ 120k CNY of parts a car
    part_price = np.maximum(100, np.round(median_price * rng.lognormal(0.0, 1.1, n_parts), -1)).astype(np.int64)
    cats = list(_PART_ITEMS)
    part_cat = rng.choice(len(cats), n_parts)
    items = [_PART_ITEMS[cats[c]].split("|") for c in part_cat]
    part_names = np.array([f"{it[int(rng.integers(len(it)))]} {chr(65 + int(rng.integers(26)))}"
                           f"{int(rng.integers(100, 999))}" for it in items], dtype=object)
    parts = {
        "part_id": ids("part", range(1, n_parts + 1)),
        "part_name": part_names,
        "category": np.array([cats[c] for c in part_cat], dtype=object),
        "supplier_id": s_ids[part_supplier],
        "unit_price_fen": part_price,
    }

    # ---- models and BOM
    usage = np.zeros((nm, n_parts), dtype=np.int64)
    p_pop = popularity / popularity.sum()
    for m in range(nm):
        chosen = rng.choice(n_parts, lines, replace=False, p=p_pop)
        usage[m, chosen] = rng.choice(qty_choices, lines)
    bom_cost = usage @ part_price
    model_ids = ids("model", range(1, nm + 1))
    model_p = rng.dirichlet(np.full(nm, 4.0))
    list_price = np.round(bom_cost / rng.uniform(0.62, 0.75, nm), -4).astype(np.int64)
    brand_words = ("Aurora Meridian Vista Zenith Horizon Solace Tempo Nova Lumen Atlas Orion Vega Sierra "
                   "Crest Pulse Terra Falcon Ember Astra Tundra").split()
    models = {
        "model_id": model_ids,
        "model_name": np.array([f"{brand_words[m % len(brand_words)]} {('S', 'X', 'L', 'E', 'GT')[m % 5]}{3 + m // 5}"
                                for m in range(nm)], dtype=object),
        "segment": np.array([_SEGMENTS[m % len(_SEGMENTS)] for m in range(nm)], dtype=object),
        "list_price_fen": list_price,
    }
    model_vds = np.array([f"{chr(65 + m % 26)}{chr(65 + (m // 26) % 26)}{m % 10}C{m % 7}" for m in range(nm)],
                         dtype=object)
    model_vds = np.array([v.replace("I", "J").replace("O", "P").replace("Q", "R") for v in model_vds], dtype=object)
    model_plant = np.array([_PLANTS[m % len(_PLANTS)] for m in range(nm)], dtype=object)
    bm, bp = np.nonzero(usage)
    nb = len(bm)
    bom = {
        "bom_line_id": ids("bom", range(1, nb + 1)),
        "model_id": model_ids[bm],
        "part_id": parts["part_id"][bp],
        "supplier_id": s_ids[part_supplier[bp]],
        "quantity": usage[bm, bp],
        "unit_price_fen": part_price[bp],
    }

    # ---- sub-BOM: tier-2 components of a share of the tier-1 parts, from linked tier-2s
    t2_of_t1: dict[int, np.ndarray] = {c: link_t2[link_t1 == c] for c in range(n1)}
    sub_parent, sub_supplier, sub_qty, sub_price = [], [], [], []
    has_sub = rng.random(n_parts) < scale.sub_bom_fraction
    for p in np.flatnonzero(has_sub):
        cands = t2_of_t1.get(int(part_supplier[p]), np.array([], dtype=np.int64))
        if len(cands) == 0:
            continue
        k = int(rng.integers(1, 4))
        share_total = rng.uniform(0.2, 0.55)
        shares = rng.dirichlet(np.ones(k)) * share_total
        for sh in shares:
            q = int(rng.choice([1, 1, 2, 4]))
            sub_parent.append(p)
            sub_supplier.append(int(rng.choice(cands)))
            sub_qty.append(q)
            sub_price.append(max(1, int(round(part_price[p] * sh / q))))
    # every tier-2 supplier with a customer that has parts supplies at least one component
    used = set(sub_supplier)
    for j in range(n1, ns):
        if j in used:
            continue
        customers = link_t1[link_t2 == j]
        cand_parts = np.flatnonzero(np.isin(part_supplier, customers))
        if len(cand_parts) == 0:
            continue
        p = int(rng.choice(cand_parts))
        sub_parent.append(p)
        sub_supplier.append(j)
        sub_qty.append(1)
        sub_price.append(max(1, int(round(part_price[p] * rng.uniform(0.03, 0.15)))))
    sub_parent = np.array(sub_parent, dtype=np.int64)
    sub_supplier = np.array(sub_supplier, dtype=np.int64)
    sub_qty = np.array(sub_qty, dtype=np.int64)
    sub_price = np.array(sub_price, dtype=np.int64)
    # shares of the parent's price, scaled down where a parent's components exceed 60 %
    share = sub_qty * sub_price / part_price[sub_parent] if len(sub_parent) else np.array([], dtype=np.float64)
    if len(sub_parent):
        tot = np.bincount(sub_parent, weights=share, minlength=n_parts)
        scale_down = np.minimum(1.0, 0.6 / np.maximum(tot, 1e-12))
        share = share * scale_down[sub_parent]
    order = np.argsort(sub_parent, kind="stable")
    sub_parent, sub_supplier, sub_qty, sub_price, share = (
        sub_parent[order], sub_supplier[order], sub_qty[order], sub_price[order], share[order])
    nsb = len(sub_parent)
    sub_bom = {
        "sub_bom_line_id": ids("sub_bom", range(1, nsb + 1)),
        "parent_part_id": parts["part_id"][sub_parent] if nsb else np.array([], dtype=object),
        "supplier_id": s_ids[sub_supplier] if nsb else np.array([], dtype=object),
        "component_name": np.array([f"{_COMPONENTS[int(i)]} {int(c)}" for i, c in
                                    zip(rng.choice(len(_COMPONENTS), nsb), rng.integers(10, 99, nsb))], dtype=object),
        "quantity": sub_qty,
        "unit_price_fen": sub_price,
    }

    # ---- dealers
    nd = scale.dealers
    d_ids = ids("dealer", range(1, nd + 1))
    city_w = np.array([CITY_TIER_WEIGHT[int(t)] for t in city_tiers])
    d_city = rng.choice(len(city_names), nd, p=city_w / city_w.sum())
    d_tier = city_tiers[d_city].astype(np.int64)
    d_size = rng.lognormal(0.0, 0.7, nd)
    d_size = d_size / d_size.mean()
    d_tenure = np.clip(rng.exponential(900, nd), 30, 3_650).astype(np.int64)
    d_x = (-0.35 * _std(np.log(d_tenure)) + 0.18 * (d_tier - d_tier.mean()) - 0.20 * _std(np.log(d_size))
           + rng.normal(0.0, 0.85, nd))
    d_mu = _calibrate(d_x, d_size, DEALER_TARGET_PD, float(np.hypot(AR_SD, 0.21)))
    d_a = d_mu + d_x
    d_b = rng.uniform(0.5, 1.5, nd)
    d_rate = scale.applications_per_day / FINANCED_SHARE * d_size / nd
    d_blocked0 = rng.random(nd) < sigmoid(logit(0.005) + 1.0 * d_x)
    owners = person_names(rng, nd)
    births = start_day - rng.integers(25 * 365, 60 * 365, nd)
    dealer_brand = _brands(rng, nd)
    dealers = {
        "dealer_id": d_ids,
        "dealer_name": np.array([f"{city_names[c]} {b} {w}" for c, b, w in
                                 zip(d_city, dealer_brand, rng.choice(_DEALER_WORDS, nd))], dtype=object),
        "owner_name": owners,
        "owner_id_number": resident_ids(rng, nd, births),
        "phone": phones(rng, nd),
        "city": city_names[d_city],
        "city_tier": d_tier,
        "onboarded_on": (start_day - d_tenure).astype(np.int64),
        "status": np.where(d_blocked0, "blocked", "active").astype(object),
    }

    return World(
        start_day=start_day,
        supplier_ids=s_ids, supplier_tier=tier, supplier_a=s_a, supplier_b=s_b, supplier_terms=s_terms,
        supplier_mu=s_mu,
        part_ids=parts["part_id"], part_supplier=part_supplier, part_price=part_price,
        model_ids=model_ids, model_p=model_p, model_vds=model_vds, model_plant=model_plant, usage=usage,
        sub_parent=sub_parent, sub_supplier=sub_supplier, sub_share=share,
        dealer_ids=d_ids, dealer_a=d_a, dealer_b=d_b, dealer_rate=d_rate, dealer_blocked0=d_blocked0,
        dealer_mu=d_mu,
        dealer_style=rng.normal(0.0, STYLE_SD, (nd, len(DEALER_STYLES))),
        supplier_style=rng.normal(0.0, STYLE_SD, (ns, len(SUPPLIER_STYLES))),
        master={"suppliers": suppliers, "supplier_links": links, "parts": parts, "vehicle_models": models,
                "bom": bom, "sub_bom": sub_bom, "dealers": dealers},
    )
