"""The `demo` dataset: a small shop generated from `project.seed` in about a second, no download.

Items sit in a 3-level category tree (4 departments x 4 aisles x 4 shelves = 64 leaves). A
title is "<brand> <adjective> <product> <variant>": the product noun names the leaf, the
adjectives belong to the aisle and the brands to the department, so sentence embeddings of the
titles cluster by category.

Each user has a home department and a session of 5..20 items that walks the tree:
- with probability 0.70 the next item is the next one on the same shelf (every shelf is a
  fixed chain: item j is followed by item j+1),
- 0.15: the same chain position on a sibling shelf of the same aisle,
- 0.10: any item of another aisle of the home department,
- 0.05: any item at all.
Starting points are uniform, so item popularity is nearly flat: a popularity ranking is weak,
while a model that knows which item and which shelf came last can predict most next items.
"""

import numpy as np
import polars as pl

from semrec.data.source import SourceData, compose_text, frame_from_rows

TREE: dict[str, dict[str, list[str]]] = {
    "Beauty & Personal Care": {
        "Makeup": ["Lipstick", "Mascara", "Foundation", "Eyeshadow Palette"],
        "Skin Care": ["Face Moisturizer", "Facial Cleanser", "Vitamin C Serum", "Mineral Sunscreen"],
        "Hair Care": ["Shampoo", "Conditioner", "Argan Hair Oil", "Styling Gel"],
        "Fragrance": ["Eau de Parfum", "Body Mist", "Cologne", "Perfume Oil"],
    },
    "Home & Kitchen": {
        "Cookware": ["Frying Pan", "Stock Pot", "Dutch Oven", "Saucepan"],
        "Cutlery": ["Chef's Knife", "Paring Knife", "Knife Block Set", "Kitchen Shears"],
        "Bedding": ["Duvet Cover", "Pillowcase Set", "Fitted Sheet", "Weighted Blanket"],
        "Bath": ["Bath Towel", "Shower Curtain", "Bath Mat", "Soap Dispenser"],
    },
    "Sports & Outdoors": {
        "Camping": ["Dome Tent", "Sleeping Bag", "Camp Stove", "Headlamp"],
        "Cycling": ["Bike Helmet", "Bike Light", "Cycling Gloves", "Bottle Cage"],
        "Fitness": ["Yoga Mat", "Dumbbell Set", "Resistance Bands", "Jump Rope"],
        "Fishing": ["Fishing Rod", "Spinning Reel", "Tackle Box", "Braided Fishing Line"],
    },
    "Electronics": {
        "Audio": ["Wireless Earbuds", "Bluetooth Speaker", "Over-Ear Headphones", "Soundbar"],
        "Computer Accessories": ["Wireless Mouse", "Mechanical Keyboard", "USB-C Hub", "Laptop Stand"],
        "Cameras": ["Action Camera", "Camera Tripod", "SD Memory Card", "Camera Backpack"],
        "Smart Home": ["Smart Plug", "Video Doorbell", "Smart Light Bulb", "Wi-Fi Range Extender"],
    },
}

BRANDS = {
    "Beauty & Personal Care": ["Lumiere", "Velvet Bloom", "PureGlow", "Maison Rose", "Aurelia", "Dewdrop", "Silk & Sage", "Nova Skin"],
    "Home & Kitchen": ["Hearthstone", "Oak & Ember", "Casa Verde", "KitchenCraft", "Linen Lane", "Copperleaf", "Nordhaus", "Brightwell"],
    "Sports & Outdoors": ["TrailPeak", "Riverstone", "Summit Gear", "Velocity", "Ironclad", "BlueFin", "Northbound", "Apex Motion"],
    "Electronics": ["Voltra", "Sonique", "PixelForge", "Nimbus", "Quantix", "Aerotech", "Lumen Labs", "Circuit Bay"],
}

ADJECTIVES = {
    "Makeup": ["Matte", "Long-Wear", "Shimmer", "Velvet", "Waterproof", "Satin-Finish"],
    "Skin Care": ["Hydrating", "Gentle", "Brightening", "Oil-Free", "Soothing", "Fragrance-Free"],
    "Hair Care": ["Volumizing", "Repairing", "Sulfate-Free", "Smoothing", "Curl-Defining", "Color-Safe"],
    "Fragrance": ["Floral", "Woody", "Citrus", "Musky", "Oriental", "Fresh"],
    "Cookware": ["Nonstick", "Cast Iron", "Stainless Steel", "Enameled", "Tri-Ply", "Ceramic-Coated"],
    "Cutlery": ["Forged", "Damascus Steel", "Ultra-Sharp", "Ergonomic", "German Steel", "Full-Tang"],
    "Bedding": ["Organic Cotton", "Bamboo", "Linen", "Sateen", "Cooling", "Hypoallergenic"],
    "Bath": ["Quick-Dry", "Plush", "Waffle-Weave", "Mildew-Resistant", "Turkish Cotton", "Non-Slip"],
    "Camping": ["Ultralight", "Waterproof", "4-Season", "Compact", "Rugged", "Backpacking"],
    "Cycling": ["Aero", "Reflective", "Lightweight", "Rechargeable", "Padded", "Carbon"],
    "Fitness": ["Non-Slip", "Adjustable", "Heavy-Duty", "Extra-Thick", "Portable", "Pro"],
    "Fishing": ["Telescopic", "Saltwater", "Graphite", "Low-Profile", "Freshwater", "High-Strength"],
    "Audio": ["Noise-Cancelling", "Hi-Fi", "Wireless", "Bass-Boost", "Portable", "Studio"],
    "Computer Accessories": ["Ergonomic", "Silent", "Backlit", "Aluminum", "Compact", "Multi-Device"],
    "Cameras": ["4K", "Stabilized", "Waterproof", "Compact", "High-Speed", "Professional"],
    "Smart Home": ["Voice-Controlled", "Energy-Saving", "App-Controlled", "Dimmable", "Wi-Fi", "Matter-Ready"],
}

VARIANTS = {
    "Beauty & Personal Care": ["Travel Size", "1.7 oz", "Rose", "Nude", "Value Pack", "Deluxe"],
    "Home & Kitchen": ["10-Inch", "Queen", "Set of 2", "Charcoal Grey", "Family Size", "Ivory"],
    "Sports & Outdoors": ["2-Person", "Large", "Olive Green", "Medium", "Pro Edition", "Black"],
    "Electronics": ["Black", "White", "2-Pack", "Gen 2", "Midnight Blue", "Plus"],
}

PRICES = {"Beauty & Personal Care": (6, 60), "Home & Kitchen": (12, 180), "Sports & Outdoors": (9, 250), "Electronics": (15, 300)}

STAY, SIBLING, AISLE = 0.70, 0.85, 0.95  # cumulative probabilities of the moves in the docstring
START_TIME = 1_672_531_200  # 2023-01-01 UTC


def load(data, *, seed: int) -> SourceData:
    """The shop of `data.demo_items` items and `data.demo_users` users that `seed` makes."""
    items, interactions = generate(seed=seed, n_items=data.demo_items, n_users=data.demo_users)
    return SourceData(f"demo (seed {seed}, {data.demo_items} items, {data.demo_users} users)", items, interactions)


def generate(*, seed: int, n_items: int, n_users: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(items, interactions) in the SourceData shapes, a pure function of the arguments."""
    rng = np.random.default_rng(seed)
    leaves = [(top, aisle, shelf) for top, aisles in TREE.items() for aisle, shelves in aisles.items() for shelf in shelves]
    shelf_items: list[list[int]] = [[] for _ in leaves]
    rows = []
    for index in range(n_items):
        shelf_items[index % len(leaves)].append(index)
    for leaf, members in enumerate(shelf_items):
        top, aisle, shelf = leaves[leaf]
        combos = [(b, a, v) for b in BRANDS[top] for a in ADJECTIVES[aisle] for v in VARIANTS[top]]
        picks = rng.permutation(len(combos))
        low, high = PRICES[top]
        for position, index in enumerate(members):
            brand, adjective, variant = combos[picks[position % len(combos)]]
            series = f" Series {position // len(combos) + 1}" if position >= len(combos) else ""
            title = f"{brand} {adjective} {shelf}, {variant}{series}"
            price = int(rng.integers(low, high)) + 0.99
            path = [top, aisle, shelf]
            rows.append({
                "item_key": f"DEMO{index:05d}",
                "title": title,
                "brand": brand,
                "price": price,
                "category_path": path,
                "text": compose_text(title, ("Brand", brand), ("Categories", " > ".join(path)), ("Price", f"${price:.2f}")),
            })
    schema = {"item_key": pl.Utf8, "title": pl.Utf8, "brand": pl.Utf8, "price": pl.Float64,
              "category_path": pl.List(pl.Utf8), "text": pl.Utf8}
    items = frame_from_rows(rows, schema).sort("item_key")

    users, item_keys, times = [], [], []
    tops = list(TREE)
    for user in range(n_users):
        home = int(rng.integers(len(tops)))
        leaf = home * 16 + int(rng.integers(16))
        position = int(rng.integers(len(shelf_items[leaf])))
        time = START_TIME + int(rng.integers(0, 180 * 86400))
        for _ in range(int(rng.integers(5, 21))):
            members = shelf_items[leaf]
            users.append(f"U{user:05d}")
            item_keys.append(f"DEMO{members[position % len(members)]:05d}")
            times.append(time)
            time += int(rng.integers(600, 3 * 86400))
            leaf, position = _next_step(rng, leaf, position, home, shelf_items)
    interactions = pl.DataFrame({"user_key": users, "item_key": item_keys, "timestamp": times}, schema_overrides={"timestamp": pl.Int64})
    return items, interactions


def _next_step(rng: np.random.Generator, leaf: int, position: int, home: int, shelf_items) -> tuple[int, int]:
    move = rng.random()
    if move < STAY:
        return leaf, (position + 1) % len(shelf_items[leaf])
    if move < SIBLING:
        aisle_start = leaf - leaf % 4
        sibling = aisle_start + (leaf % 4 + 1 + int(rng.integers(3))) % 4
        return sibling, position % len(shelf_items[sibling])
    if move < AISLE:
        aisle = (leaf // 4 % 4 + 1 + int(rng.integers(3))) % 4
        other = home * 16 + aisle * 4 + int(rng.integers(4))
        return other, int(rng.integers(len(shelf_items[other])))
    other = int(rng.integers(len(shelf_items)))
    return other, int(rng.integers(len(shelf_items[other])))
