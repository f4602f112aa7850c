"""Dead letters: the ingester that stores them and the queries the console serves."""
