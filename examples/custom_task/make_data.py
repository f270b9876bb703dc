"""Writes data/{train,validation,test}.jsonl of the ledger task (deterministic: seed 0).

A record is a starting balance and 2-4 deposits / withdrawals of 1-9, the worked balance move by
move and the final balance. Every intermediate balance stays in 0..99.

    python examples/custom_task/make_data.py
"""
import json
import os
import random

SIZES = {"train": 2000, "validation": 100, "test": 100}


def record(rng: random.Random) -> dict:
    balance = rng.randint(5, 60)
    start, moves, lines = balance, [], []
    for _ in range(rng.randint(2, 4)):
        amount = rng.randint(1, 9)
        if balance - amount >= 0 and (balance + amount > 99 or rng.random() < 0.5):
            moves.append(f"-{amount}")
            lines.append(f"{balance}-{amount}={balance - amount}")
            balance -= amount
        else:
            moves.append(f"+{amount}")
            lines.append(f"{balance}+{amount}={balance + amount}")
            balance += amount
    return {"ledger": f"{start} " + " ".join(moves), "balance": balance,
            "worked": "; ".join(lines) + f"; balance: {balance}"}


def main() -> None:
    rng, seen = random.Random(0), set()
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
    os.makedirs(folder, exist_ok=True)
    for split, size in SIZES.items():
        with open(os.path.join(folder, f"{split}.jsonl"), "w") as f:
            n = 0
            while n < size:
                r = record(rng)
                if r["ledger"] in seen:  # the splits share no problem
                    continue
                seen.add(r["ledger"])
                f.write(json.dumps(r) + "\n")
                n += 1


if __name__ == "__main__":
    main()
