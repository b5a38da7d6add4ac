"""Deterministic training text for the offline tokenizer.

No tokenizer can be downloaded here, so the make-checkpoint presets train a small byte-level BPE
on this text. It only has to give the vocabulary realistic English words, digits and punctuation
so that prompts tokenize into a plausible number of tokens; byte-level BPE covers every other
string through its 256 byte symbols. Everything is plain literals and loops, no RNG, so the text
(and therefore the trained tokenizer) is identical on every machine and Python version.
"""

PROSE = """\
The harbour town woke slowly. Fishing boats came in before dawn, their decks slick with rain,
and the market opened at six o'clock sharp. A baker on the corner sold bread, rolls and small
almond cakes; the queue outside his door was already twenty people long by a quarter past six.
Nobody minded the wait. The smell of coffee drifted across the square, and gulls argued over
scraps near the fountain.

In the old library, a student was reading about the history of the printing press. Before
Gutenberg, books were copied by hand, which made them rare and expensive. Movable type changed
that: a single workshop could produce hundreds of pages a day. Knowledge spread faster than it
ever had, and ideas travelled from city to city in a matter of weeks instead of years.

Modern computers follow a similar pattern. A processor executes simple instructions very
quickly, billions of them every second. Memory holds the data and the program; the cache keeps
recently used values close to the processor, because fetching from main memory is slow. Good
software is written with these costs in mind: it moves data as little as possible, and it does
the same work only once.

Neural networks learn by adjusting weights. Each layer multiplies its input by a matrix, adds a
bias, and applies a nonlinear function. A transformer uses attention to decide which earlier
tokens matter for the next one. Images are cut into small patches, and each patch becomes a
vector that the model can compare with words. When the model answers a question about a photo,
it combines what it sees with what it has read.

Weather report: cloudy in the morning with light showers, clearing by the afternoon. Highs of
18 degrees, lows of 9 degrees. Wind from the south-west at 15 km/h, gusting to 30 km/h near the
coast. Tomorrow will be warmer and mostly sunny; the weekend looks dry.

Recipe for a simple tomato soup: chop two onions and three cloves of garlic. Fry them gently in
olive oil for ten minutes. Add one kilogram of ripe tomatoes, a pinch of salt, and 500 ml of
water. Simmer for twenty-five minutes, then blend until smooth. Serve hot with fresh bread.

"Where are you going?" asked the old man. "To the mountains," she replied, "to see the stars."
He laughed. "You will need a warm coat, then, and good boots!" She nodded, shouldered her bag,
and walked out into the bright, cold morning.

The red car stopped at the green light; the blue bus did not. A yellow taxi waited behind them,
its driver tapping the wheel. On the pavement, a child in a purple jacket pointed at a brown dog
chasing a white cat, and everyone on the street turned to look.

Questions people often ask: What is the capital of France? How many legs does a spider have?
Why is the sky blue? Can you describe this picture? What color is the sign? How many people are
in the image? Is it day or night? What time is shown on the clock? Please answer briefly.

Mathematics is the language of patterns. Two plus two equals four; three times seven is
twenty-one; the square root of one hundred and forty-four is twelve. Prime numbers such as 2, 3,
5, 7, 11 and 13 cannot be divided evenly by any smaller number except one.

The committee met on Tuesday to review the budget. Revenue had grown by 12% over the previous
year, while costs rose by only 4%. The chair proposed investing the surplus in new equipment
and training. After a long discussion, the motion passed with seven votes in favour, two
against and one abstention.

Dear customer, thank you for your order. Your package has been shipped and should arrive
within three to five business days. If you have any questions, please reply to this message
or call our support team. We hope you enjoy your purchase!
"""

_WORD_TEXT = (
    "time year people way day man woman child world life hand part place case week company system "
    "program question work government number night point home water room mother area money story "
    "fact month lot right study book eye job word business issue side kind head house service friend "
    "father power hour game line end member law car city community name president team minute idea "
    "kid body information back parent face others level office door health person art war history "
    "party result change morning reason research girl guy moment air teacher force education picture "
    "image photo window table chair tree river mountain road bridge sky cloud sun moon star light "
    "color red green blue yellow black white orange purple brown gray small large big little old new "
    "good great high long young important different early late bright dark warm cold happy simple"
)

_VERB_TEXT = (
    "see look find give tell ask work seem feel try leave call keep begin help show hear play run "
    "move live believe hold bring write sit stand lose pay meet include continue set learn change "
    "lead understand watch follow stop create speak read spend grow open walk win offer remember "
    "love consider appear buy wait serve die send expect build stay fall cut reach describe answer"
)
_WORDS = _WORD_TEXT.split()
_VERBS = _VERB_TEXT.split()


def _sentences() -> list[str]:
    """Short template sentences that put every listed word in several contexts."""
    lines = []
    for i, noun in enumerate(_WORDS):
        verb = _VERBS[i % len(_VERBS)]
        other = _WORDS[(i * 7 + 3) % len(_WORDS)]
        lines.append(f"The {noun} will {verb} the {other}, and then the {other} {verb}s again.")
        lines.append(f"Why did the {other} {verb} {noun}s? Because {i + 2} of them were there.")
    return lines


def _numbers() -> list[str]:
    """Digits, dates, times, prices and arithmetic, in the shapes that prompts contain."""
    lines = []
    for i in range(1, 61):
        lines.append(
            f"{i} + {i * 3} = {i * 4}; {i * 12} / 4 = {i * 3}; {i}.{i % 10}5 x 2 = {2 * i}.{(i % 10) * 2 + 1}0"
        )
        lines.append(
            f"On 20{i % 30:02d}-{i % 12 + 1:02d}-{i % 28 + 1:02d} "
            f"at {i % 24:02d}:{(i * 7) % 60:02d} it cost ${i * 3}.{i % 100:02d}."
        )
    return lines


_SUFFIXES = ("s", "ed", "ing", "er", "ers", "ly", "ness", "ful", "less", "able", "ment", "ist")
_PREFIXES = ("un", "re", "pre", "over", "under", "out", "co", "non")


def _word_forms() -> list[str]:
    """Derived forms of the listed words (real or not), so larger vocabularies have words to learn."""
    stems = _WORDS + _VERBS
    lines = []
    for i, stem in enumerate(stems):
        forms = [stem + suffix for suffix in _SUFFIXES]
        forms += [prefix + stem for prefix in _PREFIXES]
        forms += [_PREFIXES[i % len(_PREFIXES)] + stem + _SUFFIXES[i % len(_SUFFIXES)]]
        lines.append(" ".join(forms) + ".")
        lines.append(", ".join(form.capitalize() for form in forms[::3]) + "!")
    return lines


def _code() -> list[str]:
    """A little code and markup, so brackets and operators get merges too."""
    return [
        "def add(a, b):\n    return a + b\n",
        "for i in range(10):\n    print(i * i)\n",
        'if (x > 0 && y < 10) { return "ok"; } else { return null; }',
        '{"name": "value", "count": 3, "items": [1, 2, 3], "ok": true}',
        "<html><body><p>Hello, world!</p></body></html>",
        "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
        "https://example.com/path/to/page?query=1&lang=en#section",
    ]


def training_corpus() -> list[str]:
    """Return the full training text as a list of documents, in a fixed order."""
    return PROSE.split("\n\n") + _sentences() + _word_forms() + _numbers() + _code()
